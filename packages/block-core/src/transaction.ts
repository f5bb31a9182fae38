/**
 * A list of undoable steps. Graph changes and permission updates record how to undo themselves; on failure
 * everything is rolled back in reverse order, on success the commit actions run in order.
 */
export interface TransactionAction {
  commit?(): void;
  abort?(): void;
}

export class Transaction {
  private readonly actions: TransactionAction[] = [];
  private done = false;

  add(action: TransactionAction): void {
    if (this.done) throw new Error('transaction already finished');
    this.actions.push(action);
  }

  commit(): void {
    this.done = true;
    for (const a of this.actions) a.commit?.();
  }

  abort(): void {
    this.done = true;
    for (let i = this.actions.length - 1; i >= 0; i--) this.actions[i]!.abort?.();
  }

  /** Run `fn` with a fresh transaction: commit if it returns, abort and rethrow if it throws. */
  static run<T>(fn: (tran: Transaction) => T): T {
    const tran = new Transaction();
    let result: T;
    try {
      result = fn(tran);
    } catch (e) {
      tran.abort();
      throw e;
    }
    tran.commit();
    return result;
  }
}
