/**
 * Faults as a user at the page meets them, against the real stack: the gate process killed (the
 * parent restarts it, and llama-server with it) while a message is being sent.
 */
import type { Browser, BrowserContext, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { artifact, launchBrowser, type Stack, startStack } from "./stack.ts";

const WAIT_MS = 90_000;

let browser: Browser;
let stack: Stack;
let context: BrowserContext;

beforeAll(async () => {
  browser = await launchBrowser();
  stack = await startStack(["--parallel", "1", "--max-tokens", "32"]);
  context = await browser.newContext({ viewport: { width: 1000, height: 760 } });
  const page = await context.newPage();
  await page.goto(stack.loginUrl);
  await page.close();
});

afterAll(async () => {
  await context?.close();
  await stack?.stop();
  await browser?.close();
});

/** Send `text` and wait until its reply is no longer streaming; returns its final state. */
async function ask(page: Page, text: string): Promise<{ state: string; text: string; lane: string }> {
  const before = await page.locator("li.assistant").count();
  await page.fill("#prompt", text);
  await page.press("#prompt", "Enter");
  const reply = page.locator("li.assistant").nth(before);
  await reply.locator("xpath=self::*[@data-state!='streaming']").waitFor({ timeout: WAIT_MS });
  return {
    state: (await reply.getAttribute("data-state")) ?? "",
    text: ((await reply.textContent()) ?? "").trim(),
    lane: (await page.getAttribute("#lane", "data-lane")) ?? "",
  };
}

describe("the gate killed while the page sends", () => {
  it("answers anyway once the gate and llama-server are back, then goes direct again", async () => {
    const page = await context.newPage();
    await page.goto(stack.baseUrl);
    await page.waitForSelector("#prompt");
    expect(await ask(page, "Say hello.")).toMatchObject({ state: "done", lane: "direct" });

    // Every notice the page shows, however briefly.
    await page.evaluate(() => {
      const notice = document.getElementById("notice") as HTMLElement;
      const seen: string[] = [];
      (window as unknown as { notices: string[] }).notices = seen;
      new MutationObserver(() => {
        if (!notice.hidden && notice.textContent) seen.push(notice.textContent);
      }).observe(notice, { attributes: true, childList: true, characterData: true, subtree: true });
    });
    const gate = stack.gatePid();
    expect(gate).toBeDefined();
    process.kill(gate as number, "SIGKILL");
    const during = await ask(page, "Name one colour.");
    const notices = await page.evaluate(() => (window as unknown as { notices: string[] }).notices);
    console.log(`while the gate restarted: ${JSON.stringify(during)}, notices ${JSON.stringify(notices)}`);
    expect(during.state).toBe("done");
    expect(during.text.length).toBeGreaterThan(0);
    // The user was told why it took a moment (a restart reads as "Reconnecting…", a loading model says so).
    expect(notices.length).toBeGreaterThan(0);
    expect(stack.gatePid()).not.toBe(gate);
    await page.screenshot({ path: artifact("e2e-gate-restart.png") });

    expect(await ask(page, "Say goodbye.")).toMatchObject({ state: "done", lane: "direct" });
    await page.close();
  });
});
