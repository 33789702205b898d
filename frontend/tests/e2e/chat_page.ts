/**
 * Driving the chat page in the browser tests: log in, open the page (capping replies so a slow,
 * shared machine stays bounded), send a message, wait for its reply to settle, and stream a reply of
 * our own text in llama-server's exact chunk format when a test needs known Markdown.
 */
import { createHash } from "node:crypto";
import type { Browser, BrowserContext, Locator, Page, Request, Route } from "playwright-core";
import { expect } from "vitest";
import type { Stack } from "./stack.ts";

export const WAIT_MS = 60_000;

/** The page's IndexedDB database for `user`: named by the key the broker puts in the page
 * (`broker.static.user_key`); the stack's one user is "local". */
export function pageDatabase(user = "local"): string {
  return `llama-direct.${createHash("sha256").update(`llama-direct.page-user\0${user}`).digest("hex").slice(0, 20)}`;
}

/**
 * Every conversation the page has saved for `user`, as JSON. The page saves asynchronously, so a test
 * polls this for what it needs kept before it reloads, rather than sleeping and hoping.
 */
export function stored(page: Page, user = "local"): Promise<string> {
  return page.evaluate(async (name) => {
    const db = await new Promise<IDBDatabase>((resolve, reject) => {
      const request = indexedDB.open(name, 1);
      request.onupgradeneeded = () => request.result.createObjectStore("conversations", { keyPath: "id" });
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
    const records = await new Promise<unknown[]>((resolve, reject) => {
      const request = db.transaction("conversations").objectStore("conversations").getAll();
      request.onsuccess = () => resolve(request.result as unknown[]);
      request.onerror = () => reject(request.error);
    });
    db.close();
    return JSON.stringify(records);
  }, pageDatabase(user));
}

/** Replies are capped so that a slow, shared machine still finishes each test in bounded time. */
export const REPLY_TOKENS = 48;

/** Log in once with the ready line's token; later pages share the session cookie. */
export async function session(
  browser: Browser,
  stack: Stack,
  viewport: { width: number; height: number } = { width: 1000, height: 760 },
  colorScheme: "light" | "dark" = "light",
): Promise<BrowserContext> {
  const context = await browser.newContext({ viewport, colorScheme });
  const page = await context.newPage();
  const response = await page.goto(stack.loginUrl);
  expect(response?.status()).toBe(200);
  expect(new URL(page.url()).search).toBe("");
  await page.close();
  return context;
}

export async function open(
  context: BrowserContext,
  stack: Stack,
  maxTokens: number | null = REPLY_TOKENS,
): Promise<{ page: Page; requests: Request[] }> {
  const page = await context.newPage();
  // Each test's page starts with no stored conversations; a reload in the same tab keeps them.
  await page.addInitScript((name) => {
    if (sessionStorage.getItem("e2e-fresh") !== null) return;
    sessionStorage.setItem("e2e-fresh", "1");
    indexedDB.deleteDatabase(name);
    localStorage.removeItem("llama-direct.theme");
  }, pageDatabase());
  const requests: Request[] = [];
  page.on("request", (request) => requests.push(request));
  if (maxTokens !== null) {
    await page.route("**/v1/chat/completions", (route) => {
      const body = JSON.parse(route.request().postData() ?? "{}") as Record<string, unknown>;
      return route.continue({ postData: JSON.stringify({ ...body, max_tokens: maxTokens }) });
    });
  }
  await page.goto(stack.baseUrl);
  await page.waitForSelector("#prompt");
  return { page, requests };
}

export async function send(page: Page, text: string): Promise<Locator> {
  const before = await page.locator("li.assistant").count();
  await page.fill("#prompt", text);
  await page.press("#prompt", "Enter");
  const reply = page.locator("li.assistant").nth(before);
  await reply.waitFor({ timeout: WAIT_MS });
  return reply;
}

export async function settled(reply: Locator): Promise<string> {
  await reply.locator("xpath=self::*[@data-state!='streaming']").waitFor({ timeout: WAIT_MS });
  return (await reply.getAttribute("data-state")) ?? "";
}

export const path = (request: Request): string => new URL(request.url()).pathname;

/** `text` as llama-server's SSE chunks (a few characters each), then a stop, usage and `[DONE]`. */
export function sseOf(text: string, size = 7): string {
  const base = { created: 1795628800, id: "chatcmpl-e2e", model: "smollm2", object: "chat.completion.chunk" };
  const frames: unknown[] = [];
  for (let at = 0; at < text.length; at += size) {
    frames.push({ ...base, choices: [{ index: 0, finish_reason: null, delta: { content: text.slice(at, at + size) } }] });
  }
  frames.push({ ...base, choices: [{ index: 0, finish_reason: "stop", delta: {} }] });
  frames.push({ ...base, choices: [], usage: { completion_tokens: 10, prompt_tokens: 10, total_tokens: 20 } });
  return `${frames.map((frame) => `data: ${JSON.stringify(frame)}\n\n`).join("")}data: [DONE]\n\n`;
}

/** Answer the direct lane's chat requests with `text` streamed as llama-server would. */
export function fulfilWith(text: string): (route: Route) => Promise<void> {
  return (route) => route.fulfill({ status: 200, contentType: "text/event-stream", body: sseOf(text) });
}
