/**
 * The model picker against the real stack in router mode: two names for the same SmolLM2 file,
 * `--models-max 1`, so picking one evicts the other. Headless Chromium.
 */
import { homedir } from "node:os";
import { join } from "node:path";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { artifact, launchBrowser, type Stack, startStack } from "./stack.ts";

const WAIT_MS = 90_000;
const MODEL = process.env.E2E_MODEL ?? join(homedir(), ".cache/llama-direct/models/SmolLM2-135M-Instruct.Q4_1.gguf");

let browser: Browser;
let stack: Stack;
let context: BrowserContext;

beforeAll(async () => {
  browser = await launchBrowser();
  stack = await startStack(["--model", `alpha=${MODEL}`, "--model", `beta=${MODEL}`, "--models-max", "1"]);
  context = await browser.newContext({ viewport: { width: 1000, height: 760 } });
  const login = await context.newPage();
  expect((await login.goto(stack.loginUrl))?.status()).toBe(200);
  await login.close();
});

afterAll(async () => {
  await context?.close();
  await stack?.stop();
  await browser?.close();
});

async function open(): Promise<Page> {
  const page = await context.newPage();
  await page.route("**/v1/chat/completions", (route) => {
    const body = JSON.parse(route.request().postData() ?? "{}") as Record<string, unknown>;
    return route.continue({ postData: JSON.stringify({ ...body, max_tokens: 16 }) });
  });
  await page.goto(stack.baseUrl);
  await page.waitForSelector("#model option", { state: "attached" });
  return page;
}

async function send(page: Page, text: string): Promise<{ state: string; model: string | null; text: string }> {
  const before = await page.locator("li.assistant").count();
  await page.fill("#prompt", text);
  await page.press("#prompt", "Enter");
  const reply = page.locator("li.assistant").nth(before);
  await reply.locator("xpath=self::*[@data-state!='streaming']").waitFor({ timeout: WAIT_MS });
  return {
    state: (await reply.getAttribute("data-state")) ?? "",
    model: await reply.getAttribute("data-model"),
    text: await reply.innerText(),
  };
}

describe("model picker", () => {
  it("lists both models with their state, answers with the one picked, and keeps the choice on reload", async () => {
    const page = await open();
    const options = await page.locator("#model option").allTextContents();
    expect(options.map((text) => text.split(" ")[0])).toEqual(["alpha", "beta"]);
    expect(options.join(" ")).not.toContain("/");
    await page.selectOption("#model", "beta");
    const reply = await send(page, "Say hello.");
    expect(reply.state).toBe("done");
    expect(reply.model).toBe("beta");
    expect(reply.text).toContain("beta");
    await page.screenshot({ path: artifact("models-picker.png") });
    await page.reload();
    await page.waitForSelector("#model option", { state: "attached" });
    expect(await page.locator("#model").inputValue()).toBe("beta");
    await page.close();
  });

  it("shows the not-loaded message when a request may not load its model", async () => {
    const page = await open();
    await page.selectOption("#model", "beta");
    expect((await send(page, "Hi.")).state).toBe("done"); // beta loaded, alpha evicted (--models-max 1)
    await page.selectOption("#model", "alpha");
    await page.route("**/direct-stream", (route) => {
      const body = JSON.parse(route.request().postData() ?? "{}") as Record<string, unknown>;
      return route.continue({ postData: JSON.stringify({ ...body, autoload: false }) });
    });
    const reply = await send(page, "Hi again.");
    expect(reply.state).toBe("error");
    expect(reply.text).toContain("This model is not loaded.");
    await page.close();
  });
  it("loads the picked model on Load, shows the load while it runs, through the lane's token-counting route", async () => {
    const page = await open();
    await page.selectOption("#model", "beta");
    expect((await send(page, "Hi.")).state).toBe("done"); // beta loaded, alpha evicted (--models-max 1)
    await page.selectOption("#model", "alpha");
    await page.waitForFunction(() => document.querySelector<HTMLSelectElement>("#model")?.selectedOptions[0]?.dataset.status === "unloaded", undefined, { timeout: WAIT_MS });
    const load = page.locator("#model-load");
    await load.waitFor({ state: "visible" });
    const negotiations: unknown[] = [];
    page.on("request", (request) => {
      if (request.url().endsWith("/direct-stream")) negotiations.push(JSON.parse(request.postData() ?? "{}"));
    });
    await load.click();
    await expect.poll(() => page.locator("#model-state").innerText(), { timeout: WAIT_MS }).toMatch(/Loading/);
    await page.waitForFunction(
      () => document.querySelector<HTMLSelectElement>("#model")?.selectedOptions[0]?.dataset.status === "loaded",
      undefined,
      { timeout: WAIT_MS },
    );
    await load.waitFor({ state: "hidden" });
    expect(await page.locator("#model-progress").isHidden()).toBe(true);
    expect(negotiations).toEqual([{ route: "chat_input_tokens", model: "alpha" }]);
    const options = await page.locator("#model option").allTextContents();
    expect(options).toEqual(["alpha (ready)", "beta (not loaded)"]);
    await page.screenshot({ path: artifact("models-loaded.png") });
    await page.close();
  });

  it("unloads the loaded model on Unload, for the owner, through the broker, and offers Load again", async () => {
    let page = await open();
    await page.selectOption("#model", "beta");
    expect((await send(page, "Hi.")).state).toBe("done"); // beta loaded
    await page.close();
    page = await open(); // a fresh read of the list: beta ready
    await page.selectOption("#model", "beta");
    const chosen = (status: string): boolean =>
      document.querySelector<HTMLSelectElement>("#model")?.selectedOptions[0]?.dataset.status === status;
    await page.waitForFunction(chosen, "loaded", { timeout: WAIT_MS });
    const unload = page.locator("#model-unload");
    await unload.waitFor({ state: "visible" });
    const asked: string[] = [];
    page.on("request", (request) => {
      const path = new URL(request.url()).pathname;
      if (path.includes("models/") || path.endsWith("direct-stream")) asked.push(`${request.method()} ${path}`);
    });
    await unload.click();
    await page.waitForFunction(chosen, "unloaded", { timeout: WAIT_MS });
    await unload.waitFor({ state: "hidden" });
    await page.locator("#model-load").waitFor({ state: "visible" });
    expect(asked).toEqual(["POST /v1/models/unload"]);
    expect(await page.locator("#notice").isHidden()).toBe(true);
    await page.screenshot({ path: artifact("models-unloaded.png") });
    await page.close();
  });
});
