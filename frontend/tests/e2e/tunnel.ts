/**
 * Deployment helpers for browser tests: a TCP forwarder that stands in for an SSH tunnel (one local
 * port piped to the serve's public port, nothing else exposed), and a raw CORS preflight from node,
 * where no browser decides which `Origin` is sent.
 */
import { request } from "node:http";
import { type AddressInfo, createConnection, createServer, type Server, type Socket } from "node:net";

// Not anchored at a line start: on a kept-alive connection a request line follows the previous
// request's body directly, and a JSON body ends without a newline.
const REQUEST_LINE = /\b(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH) (\/\S*) HTTP\/1\.[01]\r$/gm;
const CLOSE_TIMEOUT_MS = 5_000;

export interface Tunnel {
  /** The forwarded port on 127.0.0.1. */
  port: number;
  /** `METHOD path` of every HTTP request that crossed the tunnel, in order, across all connections. */
  requests(): string[];
  close(): Promise<void>;
}

/**
 * Forward every connection on a fresh port of `bindHost` to `127.0.0.1:targetPort`, byte for byte.
 * Another loopback address (127.0.0.2) stands in for a remote laptop: on it, only this one port exists.
 */
export async function openTunnel(targetPort: number, bindHost = "127.0.0.1"): Promise<Tunnel> {
  const seen: string[] = [];
  const sockets = new Set<Socket>();
  const track = (socket: Socket): void => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  };
  const server: Server = createServer((client) => {
    track(client);
    const upstream = createConnection({ host: "127.0.0.1", port: targetPort });
    track(upstream);
    // Only complete lines are scanned, so a request line split across two reads is counted once;
    // the bytes themselves pass untouched.
    let transcript = "";
    client.on("data", (data: Buffer) => {
      transcript += data.toString("latin1");
      const complete = transcript.lastIndexOf("\n") + 1;
      for (const match of transcript.slice(0, complete).matchAll(REQUEST_LINE)) seen.push(`${match[1]} ${match[2]}`);
      transcript = transcript.slice(complete);
    });
    client.pipe(upstream);
    upstream.pipe(client);
    client.on("error", () => upstream.destroy());
    upstream.on("error", () => client.destroy());
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, bindHost, () => resolve());
  });
  const close = async (): Promise<void> => {
    for (const socket of sockets) socket.destroy();
    await Promise.race([
      new Promise<void>((resolve) => server.close(() => resolve())),
      new Promise<void>((resolve) => setTimeout(resolve, CLOSE_TIMEOUT_MS)),
    ]);
  };
  return { port: (server.address() as AddressInfo).port, requests: () => [...seen], close };
}

export interface Preflight {
  status: number;
  headers: Record<string, string | string[] | undefined>;
}

/** A CORS preflight for a POST with `requestHeaders` (by default `Authorization` and `Content-Type`), as a browser sends it. */
export function preflight(
  url: string,
  origin: string,
  requestHeaders = "authorization, content-type",
  timeoutMs = 10_000,
): Promise<Preflight> {
  return new Promise((resolve, reject) => {
    const ask = request(
      url,
      {
        method: "OPTIONS",
        timeout: timeoutMs,
        headers: {
          Origin: origin,
          "Access-Control-Request-Method": "POST",
          "Access-Control-Request-Headers": requestHeaders,
        },
      },
      (response) => {
        response.resume();
        response.on("end", () => resolve({ status: response.statusCode ?? 0, headers: response.headers }));
      },
    );
    ask.on("timeout", () => ask.destroy(new Error("preflight timed out")));
    ask.on("error", reject);
    ask.end();
  });
}
