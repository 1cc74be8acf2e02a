/**
 * Group commit for the database calls every request makes (admission, settlement). Most of
 * such a call's cost is per transaction, not per element (see the batches migration), so the
 * calls that arrive while earlier ones are in flight wait and then go together, as one batch.
 * A call that arrives while fewer than `maxInFlight` batches are out goes at once: an idle
 * gateway adds no delay, a busy one pays per batch. Calls no one waits for (settlement, after
 * the response) may instead wait `collectMs` for others to join them: at low load most of them,
 * and at middling load many, would otherwise go alone, each paying a whole transaction.
 *
 * A batch is all or nothing. When the database refuses it, each of its elements is sent again
 * alone (`runOne`), so every caller gets its own answer or its own error, and one bad element
 * never fails the others. When the database could not be reached, or the batch's answer was lost
 * (it may have committed: see `mayHaveCommitted` in db.ts), every element fails with the batch:
 * sent alone, they would only wait for the database again, each taking a connection.
 */

/**
 * The database functions take at most this many elements per call (admit_many, settle_many):
 * `tollgate.max_batch_size()`, which the tests hold equal to this.
 */
export const MAX_BATCH_SIZE = 32;

export interface GroupCommit<In, Out> {
  runBatch(items: In[]): Promise<Out[]>;
  runOne(item: In): Promise<Out>;
  /** Batches out at once: the connections the pool spares for this kind of call. */
  maxInFlight: number;
  /** How long the oldest waiting call waits for company before a batch goes (0: none). */
  collectMs: number;
  /** Whether the database refused the batch (it rolled back), so that one element may be at fault. */
  refusedByDatabase(error: unknown): boolean;
}

interface Waiting<In, Out> {
  item: In;
  /** performance.now() when the call arrived. */
  since: number;
  resolve(value: Out): void;
  reject(error: unknown): void;
}

export function groupCommit<In, Out>(
  { runBatch, runOne, maxInFlight, collectMs, refusedByDatabase }: GroupCommit<In, Out>,
) {
  const waiting: Waiting<In, Out>[] = [];
  let inFlight = 0;
  let collecting: ReturnType<typeof setTimeout> | undefined;

  async function send(batch: Waiting<In, Out>[]): Promise<void> {
    if (batch.length > 1) {
      try {
        const answers = await runBatch(batch.map((element) => element.item));
        if (answers.length !== batch.length) {
          throw new Error(`a batch of ${batch.length} was answered with ${answers.length}`);
        }
        batch.forEach((element, i) => element.resolve(answers[i]));
        return;
      } catch (error) {
        const message = error instanceof Error ? error.message : error;
        if (!refusedByDatabase(error)) {
          console.warn(`a batch of ${batch.length} failed (${message}); failing each of its elements`);
          batch.forEach((element) => element.reject(error));
          return;
        }
        console.warn(`a batch of ${batch.length} failed (${message}); sending each alone`);
      }
    }
    await Promise.all(batch.map((element) => runOne(element.item).then(element.resolve, element.reject)));
  }

  function pump(): void {
    while (inFlight < maxInFlight && waiting.length > 0) {
      const wait = collectMs - (performance.now() - waiting[0].since);
      if (wait > 0 && waiting.length < MAX_BATCH_SIZE) {
        collecting ??= setTimeout(() => {
          collecting = undefined;
          pump();
        }, wait);
        return;
      }
      clearTimeout(collecting);
      collecting = undefined;
      inFlight++;
      send(waiting.splice(0, MAX_BATCH_SIZE)).finally(() => {
        inFlight--;
        pump();
      });
    }
  }

  return (item: In): Promise<Out> =>
    new Promise<Out>((resolve, reject) => {
      waiting.push({ item, since: performance.now(), resolve, reject });
      pump();
    });
}
