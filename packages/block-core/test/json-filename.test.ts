import { describe, expect, it } from 'vitest';
import { parseJsonFilename } from '../src/index.js';

describe('json: filenames', () => {
  it('a key named twice in any object is refused, as QEMU refuses it (the last one does not silently win)', () => {
    const dup = 'Could not parse the JSON options: JSON parse error, duplicate key';
    expect(() => parseJsonFilename('json:{"driver":"qcow2","file":{"driver":"file","filename":"a"},"driver":"raw"}')).toThrow(dup);
    expect(() => parseJsonFilename('json:{"file":{"filename":"a","filename":"b"}}')).toThrow(dup);
    expect(() => parseJsonFilename('json:{"a":[{"x":1,"x":2}]}')).toThrow(dup);
    // The same text as a key and as an escape-spelled key is the same key.
    expect(() => parseJsonFilename('json:{"driver":"raw","driv\\u0065r":"qcow2"}')).toThrow(dup);
  });

  it('the same key in different objects, and braces, commas and quotes inside strings, are fine', () => {
    expect(parseJsonFilename('json:{"driver":"raw","file":{"driver":"file","filename":"a{,\\"driver\\":}b"}}')).toEqual({
      driver: 'raw',
      file: { driver: 'file', filename: 'a{,"driver":}b' },
    });
    expect(parseJsonFilename('json:{"a":[{"x":1},{"x":2}],"x":3}')).toEqual({ a: [{ x: 1 }, { x: 2 }], x: 3 });
  });

  it('input that ends too early is reported with QEMU words', () => {
    for (const t of ['json:{', 'json:{"driver":', 'json:{"driver":"raw"']) {
      expect(() => parseJsonFilename(t), t).toThrow('Could not parse the JSON options: JSON parse error, premature EOI');
    }
    expect(() => parseJsonFilename('json:')).toThrow('Could not parse the JSON options: Expecting a JSON value');
  });
});
