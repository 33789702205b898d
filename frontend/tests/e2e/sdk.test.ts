/**
 * The official `openai` npm package, unchanged, on the app's own page in headless Chromium against the
 * real stack, in one-port and two-port mode: with a grant as its key, and holding three turns on one
 * client through `directFetch` loaded from the broker's `./llama-direct.js`. The SDK is bundled here,
 * in the test setup (it is a devDependency, never part of the page). Then the fallback with the lane
 * off, and the two-port preflight's refusals.
 */
import { build } from "esbuild";
import type { Browser, Page, Request } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { launchBrowser, REPO, type Stack, startStack } from "./stack.ts";
import { preflight } from "./tunnel.ts";

const WAIT_MS = 60_000;
const REPLY_TOKENS = 24;
const FOREIGN_ORIGIN = "http://evil.example";

let browser: Browser;
let sdkBundle: string;

beforeAll(async () => {
  const bundled = await build({
    stdin: { contents: 'export { default } from "openai";', resolveDir: `${REPO}/frontend`, loader: "ts" },
    bundle: true,
    format: "iife",
    globalName: "OpenAIModule",
    platform: "browser",
    target: ["chrome110"],
    write: false,
    logLevel: "warning",
  });
  sdkBundle = bundled.outputFiles[0]?.text ?? "";
  browser = await launchBrowser();
});

afterAll(async () => {
  await browser?.close();
});

/** Log in, then load the SDK bundle and the broker's `llama-direct.js` into the page. */
async function openApp(stack: Stack): Promise<{ page: Page; posts: () => string[]; negotiations: () => unknown[] }> {
  // The harness injects the SDK as inline scripts, as a host app's own page would load it; the chat
  // page's CSP (its own scripts only, tested in page.test.ts) is not what this test is about.
  const context = await browser.newContext({ bypassCSP: true });
  const page = await context.newPage();
  const requests: Request[] = [];
  page.on("request", (request) => requests.push(request));
  expect((await page.goto(stack.loginUrl, { timeout: WAIT_MS }))?.status()).toBe(200);
  await page.addScriptTag({ content: sdkBundle });
  // A module script, as a page would load it (vitest rewrites an `import()` inside an evaluated function).
  await page.addScriptTag({
    type: "module",
    content: 'import { directFetch } from "./llama-direct.js"; window.directFetch = directFetch;',
  });
  await page.waitForFunction(() => typeof (window as unknown as Record<string, unknown>).directFetch === "function",
    undefined, { timeout: 10_000 });
  const posts = (): string[] =>
    requests.filter((r) => r.method() === "POST").map((r) => new URL(r.url()).pathname);
  const negotiations = (): unknown[] =>
    requests.filter((r) => r.method() === "POST" && new URL(r.url()).pathname === "/direct-stream")
      .map((r) => r.postDataJSON() as unknown);
  return { page, posts, negotiations };
}

interface Turn {
  text: string;
  error?: string;
}

/** Non-streaming, then streaming, each with a freshly negotiated grant as the SDK's key. */
function grantAsKey(page: Page, maxTokens: number): Promise<Turn[]> {
  return page.evaluate(async (maxTokens) => {
    const OpenAI = (window as unknown as { OpenAIModule: { default: new (o: object) => any } }).OpenAIModule.default;
    const turns: { text: string; error?: string }[] = [];
    for (const stream of [false, true]) {
      const grant = await (await fetch("direct-stream", { method: "POST" })).json();
      const client = new OpenAI({ baseURL: `${grant.url}/v1`, apiKey: grant.token, dangerouslyAllowBrowser: true,
        maxRetries: 0 });
      const messages = [{ role: "user", content: "Say hello." }];
      try {
        if (stream) {
          let text = "";
          for await (const chunk of await client.chat.completions.create({ model: grant.model, messages, stream,
            max_tokens: maxTokens })) text += chunk.choices[0]?.delta?.content ?? "";
          turns.push({ text });
        } else {
          const reply = await client.chat.completions.create({ model: grant.model, messages, max_tokens: maxTokens });
          turns.push({ text: reply.choices[0]?.message?.content ?? "" });
        }
      } catch (error) {
        turns.push({ text: "", error: String(error) });
      }
    }
    return turns;
  }, maxTokens);
}

/** Three turns of one conversation on one SDK client whose `fetch` is `directFetch()`. */
function threeTurns(page: Page, maxTokens: number): Promise<Turn[]> {
  return page.evaluate(async (maxTokens) => {
    const w = window as unknown as { OpenAIModule: { default: new (o: object) => any }; directFetch: () => unknown };
    const client = new w.OpenAIModule.default({ baseURL: new URL("v1", location.href).href, apiKey: "unused",
      dangerouslyAllowBrowser: true, maxRetries: 0, fetch: w.directFetch() });
    const model = (await client.models.list()).data[0].id;
    const messages: { role: string; content: string }[] = [];
    const turns: { text: string; error?: string }[] = [];
    for (const [index, question] of ["Say hello.", "Name a colour.", "Name a fruit."].entries()) {
      messages.push({ role: "user", content: question });
      try {
        let text = "";
        if (index === 1) {
          for await (const chunk of await client.chat.completions.create({ model, messages, stream: true,
            max_tokens: maxTokens })) text += chunk.choices[0]?.delta?.content ?? "";
        } else {
          const reply = await client.chat.completions.create({ model, messages, max_tokens: maxTokens });
          text = reply.choices[0]?.message?.content ?? "";
        }
        turns.push({ text });
        messages.push({ role: "assistant", content: text });
      } catch (error) {
        turns.push({ text: "", error: String(error) });
      }
    }
    return turns;
  }, maxTokens);
}

interface ResponsesTurn extends Turn {
  /** The stream's event types, in order, repeats folded. */
  events: string[];
}

/** `responses.create({stream: true})` on an SDK client whose `fetch` is `directFetch()`. */
function responsesStream(page: Page, maxTokens: number): Promise<ResponsesTurn> {
  return page.evaluate(async (maxTokens) => {
    const w = window as unknown as { OpenAIModule: { default: new (o: object) => any }; directFetch: () => unknown };
    const client = new w.OpenAIModule.default({ baseURL: new URL("v1", location.href).href, apiKey: "unused",
      dangerouslyAllowBrowser: true, maxRetries: 0, fetch: w.directFetch() });
    const model = (await client.models.list()).data[0].id;
    const events: string[] = [];
    let text = "";
    try {
      const stream = await client.responses.create({ model, input: "Say hello.", stream: true,
        max_output_tokens: maxTokens, temperature: 0 });
      for await (const event of stream) {
        if (events[events.length - 1] !== event.type) events.push(event.type);
        if (event.type === "response.output_text.delta") text += event.delta;
      }
      return { text, events };
    } catch (error) {
      return { text, events, error: String(error) };
    }
  }, maxTokens);
}

function expectAnswered(turns: Turn[], count: number): void {
  expect(turns.map((t) => t.error)).toEqual(Array(count).fill(undefined));
  for (const turn of turns) expect(turn.text.trim().length).toBeGreaterThan(0);
}

describe.each([
  ["one-port mode", [] as string[]],
  ["two-port mode", ["--gate-port", "0"]],
])("the OpenAI JS SDK in %s", (_mode, flags) => {
  let stack: Stack;

  beforeAll(async () => {
    stack = await startStack(["--parallel", "1", "--max-tokens", String(REPLY_TOKENS), ...flags]);
  });

  afterAll(async () => {
    await stack?.stop();
  });

  it("streams and answers with a grant as its key", async () => {
    const { page, posts } = await openApp(stack);
    expectAnswered(await grantAsKey(page, 12), 2);
    expect(posts().filter((p) => p === "/direct/v1/chat/completions")).toHaveLength(2);
    await page.context().close();
  });

  it("holds three turns on one client through directFetch, each on the lane", async () => {
    const { page, posts } = await openApp(stack);
    expectAnswered(await threeTurns(page, 12), 3);
    expect(posts()).toEqual(Array(3).fill(["/direct-stream", "/direct/v1/chat/completions"]).flat());
    await page.context().close();
  });

  it("streams responses.create through directFetch, on the lane with a grant for the Responses route", async () => {
    const { page, posts, negotiations } = await openApp(stack);
    const turn = await responsesStream(page, 12);
    expect(turn.error).toBeUndefined();
    expect(turn.text.trim().length).toBeGreaterThan(0);
    expect(turn.events[0]).toBe("response.created");
    expect(turn.events).toContain("response.output_text.delta");
    expect(turn.events[turn.events.length - 1]).toBe("response.completed");
    expect(posts()).toEqual(["/direct-stream", "/direct/v1/responses"]);
    expect(negotiations()).toEqual([expect.objectContaining({ route: "responses" })]);
    await page.context().close();
  });
});

describe("the lane off (UNSLOTH_DIRECT_STREAM=0)", () => {
  let stack: Stack;

  beforeAll(async () => {
    stack = await startStack(["--parallel", "1", "--max-tokens", String(REPLY_TOKENS)], { UNSLOTH_DIRECT_STREAM: "0" });
  });

  afterAll(async () => {
    await stack?.stop();
  });

  it("holds three turns on one client through directFetch on the baseline", async () => {
    const { page, posts } = await openApp(stack);
    expectAnswered(await threeTurns(page, 12), 3);
    expect(posts()).toEqual(Array(3).fill(["/direct-stream", "/v1/chat/completions"]).flat());
    await page.context().close();
  });
});

describe("the two-port preflight", () => {
  let stack: Stack;

  beforeAll(async () => {
    stack = await startStack(["--parallel", "1", "--gate-port", "0", "--max-tokens", String(REPLY_TOKENS)]);
  });

  afterAll(async () => {
    await stack?.stop();
  });

  it("answers the SDK's names exactly, and refuses 40 names, an invalid name and a foreign origin", async () => {
    const { page } = await openApp(stack);
    const app = new URL(stack.baseUrl).origin;
    const grant = (await page.evaluate(async () => (await fetch("direct-stream", { method: "POST" })).json())) as {
      url: string;
    };
    await page.context().close();
    const completions = `${grant.url}/v1/chat/completions`;
    const sdkNames = "authorization,content-type,x-stainless-arch,x-stainless-lang,x-stainless-os,x-stainless-retry-count";
    const granted = await preflight(completions, app, sdkNames);
    expect(granted.status).toBe(204);
    expect(granted.headers["access-control-allow-headers"]).toBe(sdkNames.split(",").join(", "));
    expect(granted.headers.vary).toBe("Origin, Access-Control-Request-Headers");
    const forty = Array.from({ length: 40 }, (_, i) => `x-h${i}`).join(", ");
    for (const names of [forty, "authorization, x-a:b"]) {
      const refused = await preflight(completions, app, names);
      expect(refused.status).toBe(400);
      expect(refused.headers["access-control-allow-headers"]).toBeUndefined();
    }
    const foreign = await preflight(completions, FOREIGN_ORIGIN, sdkNames);
    expect(foreign.status).toBe(403);
    expect(foreign.headers["access-control-allow-origin"]).toBeUndefined();
  });
});
