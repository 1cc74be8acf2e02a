/**
 * A TCP relay in front of PostgreSQL that can lose the server's answer to one statement: the
 * statement reaches the server and runs to its commit, and the client never hears of it, as when
 * a connection drops or the server shuts down between the commit and the reply.
 */
export interface LossyRelay {
  /** `databaseUrl`, through the relay. */
  url: string;
  /**
   * The next statement whose text contains `text` runs, its rows never reach the client, and
   * its connection is closed `afterMs` after they were sent. Resolves when they were.
   */
  loseAnswerTo(text: string, afterMs: number): Promise<void>;
  close(): void;
}

export function startLossyRelay(databaseUrl: string): LossyRelay {
  const target = new URL(databaseUrl);
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const connections = new Set<Deno.Conn>();
  let armed: { text: string; afterMs: number; lost(): void } | null = null;

  async function relay(client: Deno.Conn): Promise<void> {
    const server = await Deno.connect({ hostname: target.hostname, port: Number(target.port) });
    connections.add(client).add(server);
    const closeBoth = () => {
      for (const connection of [client, server]) {
        if (connections.delete(connection)) connection.close();
      }
    };
    const decoder = new TextDecoder();
    // The statement is sent before it runs (postgres.js asks for its description first): its
    // answer is the first data row the server sends after it.
    let watching: typeof armed = null;
    let losing = false;
    const typesOf = messageTypes();
    const toServer = pump(client, server, (chunk) => {
      if (armed && decoder.decode(chunk).includes(armed.text)) [watching, armed] = [armed, null];
      return true;
    });
    const toClient = pump(server, client, (chunk) => {
      if (watching && !losing && typesOf(chunk).includes("D")) {
        losing = true;
        setTimeout(closeBoth, watching.afterMs);
        watching.lost();
      }
      return !losing;
    });
    // Either side closing ends the relay of both (a read on a closed side throws).
    await Promise.allSettled([toServer, toClient]).finally(closeBoth);
  }

  const accepting = (async () => {
    for await (const client of listener) relay(client).catch(() => {});
  })();

  const url = new URL(databaseUrl);
  url.hostname = "127.0.0.1";
  url.port = String((listener.addr as Deno.NetAddr).port);
  return {
    url: url.toString(),
    loseAnswerTo: (text, afterMs) => new Promise((lost) => armed = { text, afterMs, lost }),
    close() {
      listener.close();
      for (const connection of connections) connection.close();
      connections.clear();
      accepting.catch(() => {});
    },
  };
}

/** Copies `from` to `to` until `from` ends, but the chunks `pass` refuses. */
async function pump(from: Deno.Conn, to: Deno.Conn, pass: (chunk: Uint8Array) => boolean): Promise<void> {
  const buffer = new Uint8Array(64 * 1024);
  for (;;) {
    const read = await from.read(buffer);
    if (read === null) return;
    const chunk = buffer.subarray(0, read);
    if (!pass(chunk)) continue;
    for (let offset = 0; offset < chunk.length;) offset += await to.write(chunk.subarray(offset));
  }
}

/**
 * The types of the protocol messages that begin in each chunk of a server's stream, framed
 * across chunks: each message is a type byte and a 4-byte length that counts itself.
 */
function messageTypes(): (chunk: Uint8Array) => string[] {
  let rest = 0;
  let header: number[] = [];
  return (chunk) => {
    const types: string[] = [];
    for (let i = 0; i < chunk.length;) {
      if (rest > 0) {
        const skipped = Math.min(rest, chunk.length - i);
        rest -= skipped;
        i += skipped;
        continue;
      }
      header.push(chunk[i++]);
      if (header.length === 5) {
        types.push(String.fromCharCode(header[0]));
        rest = new DataView(Uint8Array.from(header).buffer).getInt32(1) - 4;
        header = [];
      }
    }
    return types;
  };
}
