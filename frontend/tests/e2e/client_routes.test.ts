/**
 * `streamResponses` and `streamMessages` on the app's own page in headless Chromium against the real
 * stack: each streams llama-server's own Responses or Messages events through the lane and gives the
 * same UI events as chat; with the lane off, the same through the route's baseline. The client is
 * bundled here, in the test setup, as an app would bundle the package.
 */
import { build } from "esbuild";
import type { Browser, Page, Request } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { UIEvent } from "../../src/shape.ts";
import { launchBrowser, REPO, type Stack, startStack } from "./stack.ts";

const WAIT_MS = 60_000;
const REPLY_TOKENS = 24;

let browser: Browser;
let clientBundle: string;

beforeAll(async () => {
  const bundled = await build({
    stdin: { contents: 'export { streamMessages, streamResponses } from "./src/client.ts";', resolveDir: `${REPO}/frontend`, loader: "ts" },
    bundle: true,
    format: "iife",
    globalName: "LlamaClient",
    platform: "browser",
    target: ["chrome110"],
    write: false,
    logLevel: "warning",
  });
  clientBundle = bundled.outputFiles[0]?.text ?? "";
  browser = await launchBrowser();
});

afterAll(async () => {
  await browser?.close();
});

/** Log in and load the client bundle, as a host page would load its own scripts. */
async function openApp(stack: Stack): Promise<{ page: Page; posts: () => string[] }> {
  const context = await browser.newContext({ bypassCSP: true });
  const page = await context.newPage();
  const requests: Request[] = [];
  page.on("request", (request) => requests.push(request));
  expect((await page.goto(stack.loginUrl, { timeout: WAIT_MS }))?.status()).toBe(200);
  await page.addScriptTag({ content: clientBundle });
  const posts = (): string[] => requests.filter((r) => r.method() === "POST").map((r) => new URL(r.url()).pathname);
  return { page, posts };
}

/** One reply on the route, greedy (`temperature` 0), as the events the page would show. */
function reply(page: Page, route: "responses" | "messages"): Promise<UIEvent[]> {
  return page.evaluate(async (route) => {
    type Stream = (request: object, options: object) => AsyncIterable<unknown>;
    const client = (window as unknown as { LlamaClient: { streamResponses: Stream; streamMessages: Stream } }).LlamaClient;
    const events: unknown[] = [];
    const stream =
      route === "responses"
        ? client.streamResponses({ input: "Say hello.", max_output_tokens: 12, temperature: 0 }, {})
        : client.streamMessages({ messages: [{ role: "user", content: "Say hello." }], max_tokens: 12, temperature: 0 }, {});
    for await (const event of stream) events.push(event);
    return events;
  }, route) as Promise<UIEvent[]>;
}

function expectReply(events: UIEvent[], lane: "direct" | "fallback"): void {
  const text = events.map((event) => (event.type === "text_delta" ? event.text : "")).join("");
  expect(events.filter((event) => event.type === "error")).toEqual([]);
  expect(text.trim().length).toBeGreaterThan(0);
  const usage = events.find((event) => event.type === "usage");
  expect(usage).toMatchObject({ type: "usage", completion_tokens: expect.any(Number) });
  expect(usage?.type === "usage" && usage.completion_tokens).toBeGreaterThan(0);
  expect(events[events.length - 1]).toMatchObject({ type: "finish", lane });
}

describe.each([
  ["on the lane", {}, "direct", "/direct"],
  ["with the lane off (UNSLOTH_DIRECT_STREAM=0)", { UNSLOTH_DIRECT_STREAM: "0" }, "fallback", ""],
] as const)("streamResponses and streamMessages %s", (_mode, env, lane, prefix) => {
  let stack: Stack;

  beforeAll(async () => {
    stack = await startStack(["--parallel", "1", "--max-tokens", String(REPLY_TOKENS)], env);
  });

  afterAll(async () => {
    await stack?.stop();
  });

  for (const route of ["responses", "messages"] as const) {
    it(`${route}: the same events as chat, from llama-server's own ${route} stream`, async () => {
      const { page, posts } = await openApp(stack);
      expectReply(await reply(page, route), lane);
      expect(posts()).toEqual(["/direct-stream", `${prefix}/v1/${route}`]);
      await page.context().close();
    });
  }
});
