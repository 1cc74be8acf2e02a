/**
 * Server-Sent Events: a body's bytes → events. The decoder is synchronous and works a chunk at
 * a time, so a stream pays for one asynchronous step per chunk read, not one per line and per
 * event (streaming.ts reads the body and feeds it the chunks).
 */

export interface SseEvent {
  event?: string;
  data: string;
  /** The last event id seen so far: the spec carries it over to later events. */
  id?: string;
}

/**
 * Events as the SSE spec dispatches them, from bytes cut anywhere: lines end at `\n`, `\r\n`
 * or `\r` (a `\r\n` or a UTF-8 character split across chunks is put back together); fields
 * accumulate until a blank line; `data` lines join with `\n`; comments (`:` lines, keep-alives)
 * are ignored. An event cut off by the end of the stream is dropped, as the spec says, so a
 * truncated stream never yields a partial event.
 */
export class SseDecoder {
  #text = new TextDecoder();
  #buffer = "";
  /** Where the next line ending can be: text already scanned holds none, bar a held-back `\r`. */
  #scanFrom = 0;
  #event: string | undefined;
  #data: string[] = [];
  #id: string | undefined;

  /** The events that `chunk` completes. */
  push(chunk: Uint8Array): SseEvent[] {
    this.#buffer += this.#text.decode(chunk, { stream: true });
    const events: SseEvent[] = [];
    const lineEnd = /\r\n|\r|\n/g;
    lineEnd.lastIndex = this.#scanFrom;
    let start = 0;
    let match: RegExpExecArray | null;
    while ((match = lineEnd.exec(this.#buffer)) !== null) {
      // A `\r` at the very end may be the first half of a `\r\n` still on its way.
      if (match[0] === "\r" && lineEnd.lastIndex === this.#buffer.length) break;
      this.#line(this.#buffer.slice(start, match.index), events);
      start = lineEnd.lastIndex;
    }
    this.#buffer = this.#buffer.slice(start);
    this.#scanFrom = match === null ? this.#buffer.length : match.index - start;
    return events;
  }

  /** The events the end of the stream completes: a held-back `\r` ends a line. */
  end(): SseEvent[] {
    const events: SseEvent[] = [];
    const rest = (this.#buffer + this.#text.decode()).split(/\r\n|\r|\n/);
    this.#buffer = "";
    // Text after the last line ending is an unterminated last line; it cannot end an event.
    rest.pop();
    for (const line of rest) this.#line(line, events);
    return events;
  }

  #line(line: string, events: SseEvent[]): void {
    if (line === "") {
      if (this.#data.length > 0) {
        events.push({
          data: this.#data.join("\n"),
          ...(this.#event !== undefined && { event: this.#event }),
          ...(this.#id !== undefined && { id: this.#id }),
        });
      }
      this.#event = undefined;
      this.#data = [];
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.#data.push(value);
    else if (field === "event") this.#event = value;
    else if (field === "id") this.#id = value;
  }
}

/** One event on the wire, blank line included. */
export function encodeEvent({ event, data }: { event?: string; data: string }): string {
  const head = event === undefined ? "" : `event: ${event}\n`;
  return `${head}${data.split(/\r\n|\r|\n/).map((line) => `data: ${line}\n`).join("")}\n`;
}
