/**
 * Server-Sent Events, as layered async generators: a body's bytes → text lines → events.
 * Each layer stops the one below when its consumer stops early, down to the body's reader,
 * so an abandoned stream releases the upstream connection.
 */

export interface SseEvent {
  event?: string;
  data: string;
  /** The last event id seen so far: the spec carries it over to later events. */
  id?: string;
}

/** The chunks of a body; cancels the body when the consumer stops before its end. */
export async function* readChunks(body: ReadableStream<Uint8Array>): AsyncGenerator<Uint8Array> {
  const reader = body.getReader();
  let settled = false;
  try {
    while (true) {
      const { done, value } = await reader.read();
      if (done) {
        settled = true;
        return;
      }
      yield value;
    }
  } catch (error) {
    // An errored stream has nothing left to cancel.
    settled = true;
    throw error;
  } finally {
    if (!settled) await reader.cancel();
    reader.releaseLock();
  }
}

/**
 * Text lines, whichever of `\n`, `\r\n` or `\r` ends them, with UTF-8 characters and `\r\n`
 * pairs that straddle two chunks put back together. A last line without an ending is yielded
 * too; the event layer decides what an unfinished event means.
 */
export async function* decodeLines(chunks: AsyncIterable<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  const lineEnd = /\r\n|\r|\n/g;
  let buffer = "";
  // Where the next line ending can be: text already scanned holds none, bar a held-back `\r`.
  let scanFrom = 0;
  for await (const chunk of chunks) {
    buffer += decoder.decode(chunk, { stream: true });
    let start = 0;
    let match: RegExpExecArray | null;
    lineEnd.lastIndex = scanFrom;
    while ((match = lineEnd.exec(buffer)) !== null) {
      // A `\r` at the very end may be the first half of a `\r\n` still on its way.
      if (match[0] === "\r" && lineEnd.lastIndex === buffer.length) break;
      yield buffer.slice(start, match.index);
      start = lineEnd.lastIndex;
    }
    buffer = buffer.slice(start);
    scanFrom = match === null ? buffer.length : match.index - start;
  }
  buffer += decoder.decode();
  const rest = buffer.split(/\r\n|\r|\n/);
  // Text after the last line ending, if any, is an unterminated last line.
  if (rest.at(-1) === "") rest.pop();
  yield* rest;
}

/**
 * Events as the SSE spec dispatches them: fields accumulate until a blank line; `data` lines
 * join with `\n`; comments (`:` lines, keep-alives) are ignored. An event cut off by the end of
 * the stream is dropped, as the spec says, so a truncated stream never yields a partial event.
 */
export async function* decodeEvents(lines: AsyncIterable<string>): AsyncGenerator<SseEvent> {
  let event: string | undefined;
  let data: string[] = [];
  let id: string | undefined;
  for await (const line of lines) {
    if (line === "") {
      if (data.length > 0) {
        yield {
          data: data.join("\n"),
          ...(event !== undefined && { event }),
          ...(id !== undefined && { id }),
        };
      }
      event = undefined;
      data = [];
      continue;
    }
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") data.push(value);
    else if (field === "event") event = value;
    else if (field === "id") id = value;
  }
}

/** The events of an SSE response body. */
export function decodeSse(body: ReadableStream<Uint8Array>): AsyncGenerator<SseEvent> {
  return decodeEvents(decodeLines(readChunks(body)));
}

/** One event on the wire, blank line included. */
export function encodeEvent({ event, data }: { event?: string; data: string }): string {
  const head = event === undefined ? "" : `event: ${event}\n`;
  return `${head}${data.split(/\r\n|\r|\n/).map((line) => `data: ${line}\n`).join("")}\n`;
}
