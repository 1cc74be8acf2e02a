/**
 * A provider's stream on its way to the client: each upstream chunk is decoded, observed for
 * usage, translated or filtered, and written on as soon as it arrives (accounting never holds
 * a token back). How the stream ended is reported once, for settlement:
 *   complete       the provider's end-of-answer marker arrived
 *   upstream_failed the provider sent an error or the connection dropped: the client's stream
 *                  ends with an error event in its own format, never as a finished answer
 *   timeout        no chunk within the idle timeout, or the stream outlived its maximum
 *   client_closed  the client went away: the upstream request is aborted at once
 */
import { GatewayError, type WireFormat } from "./errors.ts";
import * as anthropic from "./providers/anthropic.ts";
import * as openai from "./providers/openai.ts";
import {
  anthropicToOpenAIStream,
  openaiToAnthropicStream,
  type StreamTranslation,
} from "./providers/translate/streams.ts";
import type { StreamTracker } from "./providers/upstream.ts";
import { encodeEvent, SseDecoder, type SseEvent } from "./sse.ts";

export type StreamOutcome = "complete" | "upstream_failed" | "timeout" | "client_closed";

export interface StreamEnd {
  outcome: StreamOutcome;
  tracker: StreamTracker;
  error?: GatewayError;
}

/**
 * A provider's streamed body, read into one buffer that every read reuses. A default reader
 * of a fetch body allocates a fresh buffer for each read, and a stream is dozens of small
 * reads: with the buffer reused, the function's CPU per stream through Deno's HTTP stack
 * drops by more than half, below what a bare TransformStream costs (bench/streaming.ts measures
 * both over HTTP). Only a byte stream can be read into a buffer of one's own. Deno's fetch
 * bodies are byte streams; a body that is not one (a runtime that wraps fetch's body in a
 * stream of its own) is read with a default reader, each read in a buffer of its own.
 */
export class UpstreamBody {
  #reader: ReadableStreamBYOBReader | ReadableStreamDefaultReader<Uint8Array>;
  #buffer = new ArrayBuffer(16 * 1024);
  #readAhead: Uint8Array | undefined;

  constructor(body: ReadableStream<Uint8Array>) {
    this.#reader = byobReader(body) ?? body.getReader();
  }

  /**
   * Reads the first chunk ahead, before the answer is committed, to be sure the stream really
   * started: false when the body ended before sending anything. `read()` returns it first.
   */
  async started(): Promise<boolean> {
    this.#readAhead = await this.#next();
    return this.#readAhead !== undefined;
  }

  /** The next bytes, valid until the next read (the buffer is reused); undefined at the end. */
  read(): Promise<Uint8Array | undefined> {
    const ahead = this.#readAhead;
    this.#readAhead = undefined;
    return ahead ? Promise.resolve(ahead) : this.#next();
  }

  cancel(): Promise<void> {
    return this.#reader.cancel();
  }

  async #next(): Promise<Uint8Array | undefined> {
    if (!(this.#reader instanceof ReadableStreamBYOBReader)) {
      const { value, done } = await this.#reader.read();
      return done ? undefined : value;
    }
    // A read transfers the buffer into the view it returns; the next read takes it back.
    const { value, done } = await this.#reader.read(new Uint8Array(this.#buffer));
    if (value) this.#buffer = value.buffer as ArrayBuffer;
    return done ? undefined : value;
  }
}

/** A reader into the caller's buffer, which only a byte stream gives (undefined: not one). */
function byobReader(body: ReadableStream<Uint8Array>): ReadableStreamBYOBReader | undefined {
  try {
    return body.getReader({ mode: "byob" });
  } catch (error) {
    // Asking is the Streams API's only test: a TypeError on an unlocked stream means "not a
    // byte stream". Anything else (a locked stream) is an error.
    if (error instanceof TypeError && !body.locked) return undefined;
    throw error;
  }
}

export interface StreamOptions {
  upstream: UpstreamBody;
  upstreamFormat: WireFormat;
  clientFormat: WireFormat;
  clientAskedUsage: boolean;
  abort: AbortController;
  idleTimeoutMs: number;
  maxDurationMs: number;
  onEnd: (end: StreamEnd) => void;
}

const trackers = { openai: openai.createStreamTracker, anthropic: anthropic.createStreamTracker };
const errorEvents = { openai: openai.streamErrorEvent, anthropic: anthropic.streamErrorEvent };

export function clientStream(options: StreamOptions): ReadableStream<Uint8Array> {
  const { upstreamFormat, clientFormat, abort } = options;
  const tracker = trackers[upstreamFormat]();
  const encoder = new TextEncoder();
  let timeout: GatewayError | undefined;
  let ended = false;

  const end = (outcome: StreamOutcome, error?: GatewayError) => {
    if (ended) return;
    ended = true;
    clearTimeout(idleTimer);
    clearTimeout(durationTimer);
    options.onEnd({ outcome, tracker, error });
  };
  const expire = (message: string) => () => {
    timeout = new GatewayError({ status: 504, code: "provider_timeout", message });
    abort.abort(timeout);
  };
  const wentSilent = expire("The provider stopped sending mid-stream.");
  // One timer for the whole stream rather than one per event: when it fires, it looks at how
  // long the provider has been silent and either ends the stream or waits out the rest.
  let lastEventAt = performance.now();
  const checkSilence = () => {
    const silentMs = performance.now() - lastEventAt;
    if (silentMs >= options.idleTimeoutMs) wentSilent();
    else idleTimer = setTimeout(checkSilence, options.idleTimeoutMs - silentMs);
  };
  let idleTimer = setTimeout(checkSilence, options.idleTimeoutMs);
  const durationTimer = setTimeout(
    expire("The stream reached the gateway's maximum duration and was ended."),
    options.maxDurationMs,
  );

  const toClient: StreamTranslation = upstreamFormat === clientFormat
    ? passThrough(clientFormat, options.clientAskedUsage)
    : upstreamFormat === "anthropic"
    ? anthropicToOpenAIStream({ includeUsage: options.clientAskedUsage })
    : openaiToAnthropicStream();

  // Each upstream event is observed for usage, then translated or filtered; what one upstream
  // read brings goes on together, as one write to the client. The client's stream reads the
  // provider's body itself, one read per pull: every layer of streams or generators between
  // the two would cost each chunk more than the work done on it.
  const { upstream } = options;
  const decoder = new SseDecoder();
  const send = (controller: ReadableStreamDefaultController<Uint8Array>, events: SseEvent[]) =>
    controller.enqueue(encoder.encode(events.map(encodeEvent).join("")));

  /**
   * Reads the provider's body until a read brings something for the client, which goes on
   * ("more"), or until the stream is over ("end"): the body ended, or the client has its last
   * event (the rest of the body is then left unread).
   */
  async function forward(controller: ReadableStreamDefaultController<Uint8Array>): Promise<"more" | "end"> {
    for (;;) {
      const chunk = await upstream.read();
      const done = chunk === undefined;
      const events = done ? decoder.end() : decoder.push(chunk);
      if (events.length > 0) lastEventAt = performance.now();
      const out: SseEvent[] = [];
      try {
        for (const event of events) {
          if (toClient.ended) break;
          tracker.observe(event);
          out.push(...toClient.push(event));
        }
      } catch (error) {
        // An event that cannot be read ends the stream; what came before it still goes on.
        if (out.length > 0) send(controller, out);
        throw error;
      }
      if (out.length > 0) send(controller, out);
      if (toClient.ended) {
        // The client has its last event: stop reading the upstream body.
        if (!done) await upstream.cancel();
        return "end";
      }
      if (done) return "end";
      if (out.length > 0) return "more";
    }
  }

  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        if (await forward(controller) === "more") return;
        if (tracker.finished) {
          end("complete");
        } else {
          // An upstream error event was already passed on (or translated); a plain cut was not.
          const error = tracker.error ? undefined : cutShort();
          if (error) send(controller, [errorEvents[clientFormat](error)]);
          end("upstream_failed", error);
        }
        controller.close();
      } catch (caught) {
        if (ended) return; // the client is gone; nothing more to write
        const error = timeout ?? (caught instanceof GatewayError ? caught : cutShort());
        send(controller, [errorEvents[clientFormat](error)]);
        controller.close();
        end(timeout ? "timeout" : "upstream_failed", error);
      }
    },
    cancel() {
      end("client_closed");
      abort.abort(new DOMException("client closed", "AbortError"));
    },
  });
}

/** Same format: the events as they came, minus the usage chunk the client did not ask for. */
function passThrough(format: WireFormat, clientAskedUsage: boolean): StreamTranslation {
  return {
    push: (event) => format === "anthropic" || openai.forwardToClient(event, clientAskedUsage) ? [event] : [],
    ended: false,
  };
}

const cutShort = () =>
  new GatewayError({
    status: 502,
    code: "upstream_stream_cut",
    message: "The provider's stream ended before the answer was complete; the answer is truncated.",
  });
