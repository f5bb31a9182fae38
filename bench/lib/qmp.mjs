/**
 * A minimal QMP client (QEMU Machine Protocol over a UNIX socket) for driving qemu-storage-daemon in the
 * benchmarks: commands and their replies, and waiting for events.
 */
import { createConnection } from 'node:net';

export class Qmp {
  constructor(socketPath) {
    this.path = socketPath;
    this.buf = '';
    this.pending = [];
    this.events = [];
    this.eventWaiters = [];
  }

  async connect() {
    this.sock = createConnection(this.path);
    this.sock.setEncoding('utf8');
    this.sock.on('data', (d) => this.onData(d));
    await new Promise((resolve, reject) => {
      this.sock.once('connect', resolve);
      this.sock.once('error', reject);
    });
    await this.nextMessage((m) => 'QMP' in m); // greeting
    await this.execute('qmp_capabilities');
  }

  onData(d) {
    this.buf += d;
    let i;
    while ((i = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, i).trim();
      this.buf = this.buf.slice(i + 1);
      if (!line) continue;
      const msg = JSON.parse(line);
      if (msg.event) {
        this.events.push(msg);
        for (const w of this.eventWaiters.splice(0)) w();
      } else {
        const p = this.pending.shift();
        if (p) p(msg);
        else this.greeting = msg;
      }
    }
  }

  nextMessage(pred) {
    if (this.greeting && pred(this.greeting)) return Promise.resolve(this.greeting);
    return new Promise((resolve) => {
      const check = () => (this.greeting && pred(this.greeting) ? resolve(this.greeting) : setTimeout(check, 5));
      check();
    });
  }

  execute(command, args) {
    return new Promise((resolve, reject) => {
      this.pending.push((msg) => (msg.error ? reject(new Error(`${command}: ${msg.error.desc}`)) : resolve(msg.return)));
      this.sock.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
    });
  }

  /** Wait for an event (from the start of the session) matching `name` and `pred`. */
  async waitEvent(name, pred = () => true) {
    for (;;) {
      const i = this.events.findIndex((e) => e.event === name && pred(e.data ?? {}));
      if (i >= 0) return this.events.splice(i, 1)[0];
      await new Promise((r) => this.eventWaiters.push(r));
    }
  }

  close() {
    this.sock.destroy();
  }
}
