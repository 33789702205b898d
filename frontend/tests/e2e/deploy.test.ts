/**
 * Deployment as users run it, in headless Chromium against the real stack: the page reached through
 * one forwarded port (an SSH tunnel's stand-in), and two-port mode, where the lane is cross-origin.
 * The reply length is capped on the server (`--max-tokens`) rather than by routing the page's
 * requests: Playwright answers CORS preflights itself while a route is set, which would hide the
 * gate's own preflight answer.
 */
import type { Browser, BrowserContext, Locator, Page, Request, Response } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { artifact, launchBrowser, type Stack, startStack } from "./stack.ts";
import { openTunnel, preflight, type Tunnel } from "./tunnel.ts";

const WAIT_MS = 60_000;
const REPLY_TOKENS = 48;
const FOREIGN_ORIGIN = "http://evil.example";

let browser: Browser;

beforeAll(async () => {
  browser = await launchBrowser();
});

afterAll(async () => {
  await browser?.close();
});

const path = (request: Request): string => new URL(request.url()).pathname;

/** Log in on `loginUrl` (its 303 lands on the page), then wait for the chat to be usable. */
async function login(page: Page, loginUrl: string): Promise<Request[]> {
  const requests: Request[] = [];
  page.on("request", (request) => requests.push(request));
  const response = await page.goto(loginUrl, { timeout: WAIT_MS });
  expect(response?.status()).toBe(200);
  expect(new URL(page.url()).search).toBe("");
  await page.waitForSelector("#prompt", { timeout: WAIT_MS });
  return requests;
}

/** Send `text` and return the reply with the negotiation's answer, once the reply has settled. */
async function chat(page: Page, text: string): Promise<{ reply: Locator; grant: Record<string, unknown> }> {
  const negotiated = page.waitForResponse(
    (r: Response) => r.request().method() === "POST" && new URL(r.url()).pathname === "/direct-stream",
    { timeout: WAIT_MS },
  );
  const before = await page.locator("li.assistant").count();
  await page.fill("#prompt", text);
  await page.press("#prompt", "Enter");
  const grant = (await (await negotiated).json()) as Record<string, unknown>;
  const reply = page.locator("li.assistant").nth(before);
  await reply.waitFor({ timeout: WAIT_MS });
  await reply.locator("xpath=self::*[@data-state!='streaming']").waitFor({ timeout: WAIT_MS });
  return { reply, grant };
}

describe("through one forwarded port", () => {
  let stack: Stack;
  let tunnel: Tunnel;
  let context: BrowserContext;

  beforeAll(async () => {
    stack = await startStack(["--parallel", "1", "--max-tokens", String(REPLY_TOKENS)]);
    tunnel = await openTunnel(Number(new URL(stack.baseUrl).port));
    context = await browser.newContext({ viewport: { width: 1000, height: 760 } });
  });

  afterAll(async () => {
    await context?.close();
    await tunnel?.close();
    await stack?.stop();
  });

  it("streams a reply through the direct lane on the forwarded address", async () => {
    const forwarded = new URL(stack.loginUrl);
    forwarded.port = String(tunnel.port);
    const origin = `http://127.0.0.1:${tunnel.port}`;
    expect(forwarded.origin).toBe(origin);
    expect(tunnel.port).not.toBe(Number(new URL(stack.baseUrl).port));

    const page = await context.newPage();
    const requests = await login(page, forwarded.toString());
    expect(page.url()).toBe(`${origin}/`);
    const { reply, grant } = await chat(page, "Say hello in one short sentence.");

    expect(await reply.getAttribute("data-state")).toBe("done");
    expect(await page.getAttribute("#lane", "data-lane")).toBe("direct");
    expect(await reply.getAttribute("data-lane")).toBe("direct");
    expect((await reply.locator(".text").textContent())?.trim().length).toBeGreaterThan(0);
    expect(grant.supported).toBe(true);
    expect(grant.url).toBe(`${origin}/direct`);
    const direct = requests.filter((r) => path(r) === "/direct/v1/chat/completions");
    expect(direct.map((r) => r.url())).toEqual([`${origin}/direct/v1/chat/completions`]);
    expect((await direct[0]?.response())?.status()).toBe(200);
    expect(requests.filter((r) => r.method() === "POST").map(path)).toEqual([
      "/direct-stream",
      "/direct/v1/chat/completions",
    ]);
    // Nothing reached the serve's own port: every request the page made crossed the tunnel.
    expect(requests.map((r) => new URL(r.url()).origin).filter((o) => o !== origin)).toEqual([]);
    expect(tunnel.requests()).toEqual(
      expect.arrayContaining(["POST /direct-stream", "POST /direct/v1/chat/completions"]),
    );
    await page.screenshot({ path: artifact("e2e-tunnel.png") });
    await page.close();
  });
});

interface Seen {
  method: string;
  url: string;
  preflight: boolean;
  status?: number;
  allowOrigin?: string;
  failed?: string;
}

/** What the network saw, from DevTools itself: Playwright's own request events leave preflights out. */
async function watchNetwork(context: BrowserContext, page: Page): Promise<Map<string, Seen>> {
  const seen = new Map<string, Seen>();
  const cdp = await context.newCDPSession(page);
  cdp.on("Network.requestWillBeSent", (event) => {
    seen.set(event.requestId, {
      method: event.request.method,
      url: event.request.url,
      preflight: event.type === "Preflight" || event.initiator.type === "preflight",
    });
  });
  cdp.on("Network.responseReceived", (event) => {
    const entry = seen.get(event.requestId);
    if (!entry) return;
    entry.status = event.response.status;
    const headers = Object.entries(event.response.headers);
    entry.allowOrigin = headers.find(([name]) => name.toLowerCase() === "access-control-allow-origin")?.[1];
  });
  cdp.on("Network.loadingFailed", (event) => {
    const entry = seen.get(event.requestId);
    if (entry) entry.failed = event.errorText;
  });
  await cdp.send("Network.enable");
  return seen;
}

describe("two-port mode", () => {
  let stack: Stack;
  let context: BrowserContext;

  beforeAll(async () => {
    stack = await startStack(["--parallel", "1", "--gate-port", "0", "--max-tokens", String(REPLY_TOKENS)]);
    context = await browser.newContext({ viewport: { width: 1000, height: 760 } });
  });

  afterAll(async () => {
    await context?.close();
    await stack?.stop();
  });

  it("streams cross-origin to the lane port after a granted preflight; a foreign origin is refused", async () => {
    const app = new URL(stack.baseUrl).origin;
    const watched = await context.newPage();
    const seen = await watchNetwork(context, watched);
    const requests = await login(watched, stack.loginUrl);
    expect(new URL(watched.url()).origin).toBe(app);

    const { reply, grant } = await chat(watched, "Say hello in one short sentence.");
    expect(grant.supported).toBe(true);
    const lane = new URL(String(grant.url));
    expect(lane.hostname).toBe(new URL(app).hostname);
    expect(lane.port).not.toBe(new URL(app).port);
    expect(lane.pathname).toBe("/direct");
    const completions = `${lane.origin}/direct/v1/chat/completions`;

    expect(await reply.getAttribute("data-state")).toBe("done");
    expect(await watched.getAttribute("#lane", "data-lane")).toBe("direct");
    expect(await reply.getAttribute("data-lane")).toBe("direct");
    expect((await reply.locator(".text").textContent())?.trim().length).toBeGreaterThan(0);
    const direct = requests.filter((r) => r.method() === "POST" && path(r) === "/direct/v1/chat/completions");
    expect(direct.map((r) => r.url())).toEqual([completions]);
    expect((await direct[0]?.allHeaders())?.origin).toBe(app);
    expect((await direct[0]?.response())?.status()).toBe(200);

    const preflights = [...seen.values()].filter((s) => s.preflight || s.method === "OPTIONS");
    expect(preflights).toEqual([
      { method: "OPTIONS", url: completions, preflight: true, status: 204, allowOrigin: app },
    ]);
    await watched.screenshot({ path: artifact("e2e-two-port.png") });
    await watched.close();

    const granted = await preflight(completions, app);
    expect(granted.status).toBe(204);
    expect(granted.headers["access-control-allow-origin"]).toBe(app);
    const foreign = await preflight(completions, FOREIGN_ORIGIN);
    expect(foreign.status).toBe(403);
    expect(foreign.headers["access-control-allow-origin"]).toBeUndefined();
  });

  it("falls back silently when a tunnel forwards the app's port but not the lane's", async () => {
    const tunnel = await openTunnel(Number(new URL(stack.baseUrl).port), "127.0.0.2");
    try {
      const forwarded = new URL(stack.loginUrl);
      forwarded.hostname = "127.0.0.2";
      forwarded.port = String(tunnel.port);
      const page = await context.newPage();
      const requests = await login(page, forwarded.toString());
      const { reply, grant } = await chat(page, "Name one colour.");
      expect(grant.supported).toBe(true);
      // The lane is offered on the tunnel's host, at the gate's port, where nothing listens.
      const lane = new URL(String(grant.url));
      expect(lane.hostname).toBe("127.0.0.2");
      expect(lane.port).not.toBe(String(tunnel.port));

      expect(await reply.getAttribute("data-state")).toBe("done");
      expect(await page.getAttribute("#lane", "data-lane")).toBe("fallback");
      expect((await reply.locator(".text").textContent())?.trim().length).toBeGreaterThan(0);
      const posts = requests.filter((r) => r.method() === "POST").map((r) => r.url());
      expect(posts).toContain(`${lane.origin}/direct/v1/chat/completions`);
      expect(posts).toContain(`http://127.0.0.2:${tunnel.port}/v1/chat/completions`);
      expect(tunnel.requests()).toEqual(expect.arrayContaining(["POST /v1/chat/completions"]));
      expect(tunnel.requests()).not.toContain("POST /direct/v1/chat/completions");
      await page.close();
    } finally {
      await tunnel.close();
    }
  });
});
