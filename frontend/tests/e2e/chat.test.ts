/**
 * The demo page against the real stack (`llama-direct serve`, llama-server with SmolLM2) in headless
 * Chromium. Screenshots go to ../test-artifacts/.
 */
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { Browser, BrowserContext } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { open, path, send, session as sessionIn, settled, WAIT_MS } from "./chat_page.ts";
import { artifact, launchBrowser, type Stack, startStack } from "./stack.ts";

const session = (stack: Stack): Promise<BrowserContext> => sessionIn(browser, stack);

const TOOL_CALLS = readFileSync(fileURLToPath(new URL("../fixtures/tool-calls.handmade.sse", import.meta.url)));

let browser: Browser;

beforeAll(async () => {
  browser = await launchBrowser();
});

afterAll(async () => {
  await browser?.close();
});

describe("default template", () => {
  let stack: Stack;
  let context: BrowserContext;

  beforeAll(async () => {
    stack = await startStack(["--parallel", "1"]);
    context = await session(stack);
  });

  afterAll(async () => {
    await context?.close();
    await stack?.stop();
  });

  it("streams a reply through the direct lane", async () => {
    const { page, requests } = await open(context, stack);
    const reply = await send(page, "Say hello in one short sentence.");
    expect(await settled(reply)).toBe("done");
    expect(await page.getAttribute("#lane", "data-lane")).toBe("direct");
    expect(await page.textContent("#lane")).toBe("Direct");
    expect(await page.getAttribute("#lane", "title")).toContain("straight from the model server");
    expect(await reply.getAttribute("data-lane")).toBe("direct");
    expect((await reply.locator(".text").textContent())?.trim().length).toBeGreaterThan(0);
    expect(Number(await page.textContent("#tps"))).toBeGreaterThan(0);
    // SmolLM2's own template takes no tools: the demo tools are not offered.
    const models = (await (await page.request.get(`${stack.baseUrl}v1/models`)).json()) as { data: { tools?: boolean }[] };
    expect(models.data[0]?.tools).toBeUndefined();
    expect(await page.locator("#tools-offer").isHidden()).toBe(true);
    const posts = requests.filter((r) => r.method() === "POST").map(path);
    expect(posts).toEqual(["/direct-stream", "/direct/v1/chat/completions"]);
    const direct = requests.find((r) => path(r) === "/direct/v1/chat/completions");
    expect((await direct?.response())?.status()).toBe(200);
    expect(direct?.headers().authorization).toMatch(/^Bearer \S+$/);
    await page.screenshot({ path: artifact("e2e-direct.png") });
    await page.close();
  });

  for (const [label, refuse] of [
    ["refuses", "refuse"],
    ["is unreachable", "unreachable"],
  ] as const) {
    it(`falls back to the broker when the lane ${label}`, async () => {
      const { page, requests } = await open(context, stack);
      await page.route("**/direct/v1/chat/completions", (route) =>
        refuse === "refuse"
          ? route.fulfill({ status: 503, contentType: "application/json", body: '{"error":{"code":503}}' })
          : route.abort("connectionrefused"),
      );
      const reply = await send(page, "Name one colour.");
      expect(await settled(reply)).toBe("done");
      expect(await page.getAttribute("#lane", "data-lane")).toBe("fallback");
      expect((await reply.locator(".text").textContent())?.trim().length).toBeGreaterThan(0);
      // The page asks for resumable streams, so the abandoned one is cancelled before the fallback.
      const posts = requests.filter((r) => r.method() === "POST");
      expect(posts.map(path)).toEqual([
        "/direct-stream",
        "/direct/v1/chat/completions",
        "/direct-stream",
        "/v1/chat/completions",
      ]);
      expect(posts[2]?.postDataJSON()).toEqual({ cancel: expect.any(String) });
      if (refuse === "refuse") await page.screenshot({ path: artifact("e2e-fallback.png") });
      await page.close();
    });
  }

  it("the stop button stops the reply, cancels the resumable stream and frees the slot", async () => {
    const { page, requests } = await open(context, stack, null);
    expect((await stack.health()).slots).toEqual({ total: 1, busy: 0 });
    const reply = await send(page, "Write a very long story, at least two thousand words, about a llama who travels the world.");
    await reply.locator(".text").waitFor({ timeout: WAIT_MS });
    expect(await reply.getAttribute("data-state")).toBe("streaming");
    expect((await stack.health()).slots.busy).toBe(1);
    const cancelled = page.waitForResponse((r) => r.request().method() === "DELETE", { timeout: WAIT_MS });
    await page.click("#stop");
    expect(await settled(reply)).toBe("stopped");
    expect((await reply.locator(".text").textContent())?.length).toBeGreaterThan(0);
    const deleted = await cancelled;
    expect(path(deleted.request())).toBe("/direct/v1/stream");
    expect(deleted.status()).toBeLessThan(300);
    const negotiations = requests.filter((r) => path(r) === "/direct-stream").map((r) => r.postDataJSON());
    // The page names the picked model (here the only one) when it negotiates the chat.
    expect(negotiations).toEqual([{ resumable: true, model: expect.any(String) }, { cancel: expect.any(String) }]);
    const freedBy = Date.now() + 3_000;
    while ((await stack.health()).slots.busy !== 0) {
      expect(Date.now()).toBeLessThan(freedBy);
      await new Promise((r) => setTimeout(r, 100));
    }
    await page.screenshot({ path: artifact("e2e-stopped.png") });
    await page.close();
  });
  it("says plainly that a model without vision cannot read an attached image", async () => {
    const { page } = await open(context, stack);
    const png = Buffer.from(
      "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==",
      "base64",
    );
    // SmolLM2 reads no images: the page does not offer to attach one, and an image that reaches the
    // composer anyway (a file input driven by hand, as a paste or a drop would) is turned away before
    // anything is sent. The gate's own refusal of an image for this model is tests/real/test_vision_real.py.
    await page.waitForSelector("#model option", { state: "attached" });
    expect(await page.isHidden("#attach")).toBe(true);
    await page.setInputFiles("#image", { name: "dot.png", mimeType: "image/png", buffer: png });
    await expect.poll(() => page.textContent("#notice")).toBe("The chosen model does not read images.");
    expect(await page.isHidden("#attachment")).toBe(true);
    await page.screenshot({ path: artifact("e2e-vision.png") });
    await page.close();
  });
});

describe("think template", () => {
  let stack: Stack;
  let context: BrowserContext;

  beforeAll(async () => {
    stack = await startStack(["--chat-template", "think"]);
    context = await session(stack);
  });

  afterAll(async () => {
    await context?.close();
    await stack?.stop();
  });

  it("puts the reasoning in a think block that collapses when it ends", async () => {
    const { page } = await open(context, stack);
    const reply = await send(page, "What is 2+2? Think first.");
    expect(await settled(reply)).toBe("done");
    // SmolLM2 under the think template sometimes answers inside its reasoning and stops there: such a
    // reply is shown as the reply, not as an empty bubble that says "Thought for N s".
    if ((await reply.getAttribute("data-promoted")) === "reasoning") {
      expect((await reply.locator(".markdown").textContent())?.trim().length).toBeGreaterThan(0);
      expect(await reply.locator("details.think").count()).toBe(0);
      await page.screenshot({ path: artifact("e2e-think-promoted.png") });
      return page.close();
    }
    const think = reply.locator("details.think");
    expect(await think.count()).toBe(1);
    expect((await think.locator(".body").textContent())?.trim().length).toBeGreaterThan(0);
    expect(await think.evaluate((node) => (node as HTMLDetailsElement).open)).toBe(false);
    expect(await think.locator("summary").textContent()).toMatch(/^Thought for \d+\.\d s$/);
    await think.locator("summary").click();
    await page.screenshot({ path: artifact("e2e-think.png") });
    await page.close();
  });
});

describe("tools template", () => {
  let stack: Stack;
  let context: BrowserContext;

  beforeAll(async () => {
    stack = await startStack(["--chat-template", "tools"]);
    context = await session(stack);
  });

  afterAll(async () => {
    await context?.close();
    await stack?.stop();
  });

  it("runs a tool round trip: a browser tool, a broker tool, then the real model answers", async () => {
    const { page, requests } = await open(context, stack);
    // SmolLM2-135M cannot emit a tool call, so the first round's answer is the hand-made fixture in
    // llama-server's exact tool_calls format; the second round goes to the real server.
    let rounds = 0;
    await page.route("**/direct/v1/chat/completions", (route) => {
      rounds += 1;
      if (rounds > 1) return route.fallback();
      return route.fulfill({ status: 200, contentType: "text/event-stream", body: TOOL_CALLS });
    });
    await page.click("#settings-toggle");
    await page.locator("#tools-offer").waitFor({ state: "visible" }); // the template takes tools
    await page.check("#tools");
    const reply = await send(page, "What time is it, and echo héllo?");
    expect(await settled(reply)).toBe("done");
    const cards = reply.locator(".tool");
    expect(await cards.count()).toBe(2);
    expect(await cards.nth(0).locator(".head").textContent()).toBe("Tool: current_timedone");
    expect(await cards.nth(1).locator(".head").textContent()).toBe("Tool: echodone");
    expect(await cards.nth(1).locator(".result").textContent()).toContain('"result": "héllo 🦙"');
    const echo = requests.find((r) => path(r) === "/tools/echo");
    expect((await echo?.response())?.status()).toBe(200);
    expect(rounds).toBe(2);
    expect((await reply.locator(".text").textContent())?.trim().length).toBeGreaterThan(0);
    expect(await reply.getAttribute("data-lane")).toBe("direct");
    await page.screenshot({ path: artifact("e2e-tools.png") });
    await page.close();
  });
});
