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
import { decodeSseBatches, encodeEvent, type SseEvent } from "./sse.ts";

export type StreamOutcome = "complete" | "upstream_failed" | "timeout" | "client_closed";

export interface StreamEnd {
  outcome: StreamOutcome;
  tracker: StreamTracker;
  error?: GatewayError;
}

export interface StreamOptions {
  upstream: ReadableStream<Uint8Array>;
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
  // read brings goes on together, as one write to the client.
  async function* batches(): AsyncGenerator<SseEvent[]> {
    for await (const events of decodeSseBatches(options.upstream)) {
      lastEventAt = performance.now();
      const out: SseEvent[] = [];
      try {
        for (const event of events) {
          if (toClient.ended) break;
          tracker.observe(event);
          out.push(...toClient.push(event));
        }
      } catch (error) {
        // An event that cannot be read ends the stream; what came before it still goes on.
        if (out.length > 0) yield out;
        throw error;
      }
      if (out.length > 0) yield out;
      // Stopping here stops reading the upstream body too.
      if (toClient.ended) return;
    }
  }
  const written = batches();

  const send = (controller: ReadableStreamDefaultController<Uint8Array>, events: SseEvent[]) =>
    controller.enqueue(encoder.encode(events.map(encodeEvent).join("")));

  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const next = await written.next();
        if (!next.done) return send(controller, next.value);
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

/** A body whose first chunk was already read (to be sure the stream started), made whole again. */
export function resumeBody(
  firstChunk: Uint8Array,
  reader: ReadableStreamDefaultReader<Uint8Array>,
): ReadableStream<Uint8Array> {
  let first: Uint8Array | undefined = firstChunk;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (first) {
        controller.enqueue(first);
        first = undefined;
        return;
      }
      const { done, value } = await reader.read();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    cancel: (reason) => reader.cancel(reason),
  });
}
