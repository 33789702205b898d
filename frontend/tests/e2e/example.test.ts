/**
 * The example host app (examples/fastapi-app/, `make example`) in Chromium: its own login, a reply
 * streamed direct through the lane it started, the same reply through its baseline when
 * `UNSLOTH_DIRECT_STREAM=0`, and no grant for a user it refuses.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { artifact, launchBrowser, REPO } from "./stack.ts";

const READY = /^example ready: (http:\/\/\S+)$/m;
const READY_TIMEOUT_MS = Number(process.env.E2E_READY_TIMEOUT_MS ?? 180_000);
const REPLY_MS = 120_000;
const USERS = "alice:wonderland,bob:builder";

interface Example {
  url: string;
  stop(): Promise<void>;
}

/** `make example` on a free port with a data dir of its own, until it prints its ready line. */
async function startExample(env: Record<string, string> = {}): Promise<Example> {
  const dataDir = mkdtempSync(join(tmpdir(), "ld-example-"));
  const extra: Record<string, string> = {};
  if (process.env.E2E_LLAMA_SERVER) extra.EXAMPLE_LLAMA_SERVER = process.env.E2E_LLAMA_SERVER;
  if (process.env.E2E_MODEL) extra.EXAMPLE_MODEL = process.env.E2E_MODEL;
  const child: ChildProcess = spawn("make", ["--no-print-directory", "-s", "example"], {
    cwd: REPO,
    env: { ...process.env, EXAMPLE_USERS: USERS, EXAMPLE_PORT: "0", EXAMPLE_DATA_DIR: dataDir, ...extra, ...env },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true, // its own process group: the stop reaches make and the app alike
  });
  let stdout = "";
  let stderr = "";
  child.stderr?.on("data", (data: Buffer) => (stderr = (stderr + data.toString()).slice(-4000)));
  const exited = new Promise<void>((done) => child.once("exit", () => done()));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) process.kill(-(child.pid as number), "SIGTERM");
    await exited;
    rmSync(dataDir, { recursive: true, force: true });
  };
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`example not ready in time:\n${stderr}`)), READY_TIMEOUT_MS);
    child.stdout?.on("data", (data: Buffer) => {
      stdout += data.toString();
      const match = READY.exec(stdout);
      if (match) {
        clearTimeout(timer);
        resolve(match[1] as string);
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`make example exited with ${code}:\n${stderr}`));
    });
  }).catch(async (error: unknown) => {
    await stop();
    throw error;
  });
  return { url, stop };
}

async function logIn(page: Page, url: string, name: string, password: string): Promise<void> {
  await page.goto(url);
  await page.getByLabel("Name").fill(name);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Log in" }).click();
}

/** Send one message; the lane the reply came by (`direct` or `fallback`) and its text. */
async function ask(page: Page, text: string): Promise<{ lane: string; reply: string }> {
  await page.getByLabel("Message").fill(text);
  await page.getByRole("button", { name: "Send" }).click();
  await page.waitForFunction(
    () => ["direct", "fallback", "resumed"].includes(document.getElementById("lane")?.textContent ?? ""),
    undefined,
    { timeout: REPLY_MS },
  );
  return {
    lane: (await page.locator("#lane").textContent()) ?? "",
    reply: (await page.locator("#reply").textContent()) ?? "",
  };
}

/** Every origin the page sent a request to. */
function origins(page: Page): Set<string> {
  const seen = new Set<string>();
  page.on("request", (request) => seen.add(new URL(request.url()).origin));
  return seen;
}

let browser: Browser;

beforeAll(async () => {
  browser = await launchBrowser();
});

afterAll(async () => {
  await browser?.close();
});

describe("the example app", () => {
  let example: Example;

  beforeAll(async () => {
    example = await startExample();
  });

  afterAll(async () => {
    await example?.stop();
  });

  it("logs in with its own form and streams a reply direct", async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    const seen = origins(page);
    try {
      await logIn(page, example.url, "alice", "wonderland");
      await expect.poll(() => page.locator("#user").textContent()).toBe("alice");
      const { lane, reply } = await ask(page, "Say hello.");
      expect(lane).toBe("direct");
      expect(reply.trim()).not.toBe("");
      expect(await page.locator("#error").textContent()).toBe("");
      const app = new URL(example.url).origin;
      expect([...seen].filter((origin) => origin !== app)).toHaveLength(1); // the lane, on its own port
    } catch (error) {
      await page.screenshot({ path: artifact("example-direct.png") });
      throw error;
    } finally {
      await context.close();
    }
  });

  it("gives a user it refuses no grant", async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    try {
      await logIn(page, example.url, "alice", "not-her-password");
      await expect.poll(() => page.locator("#message").textContent()).toBe("Wrong name or password.");
      const answers = await page.evaluate(async () => {
        const negotiate = async (credentials: string): Promise<[number, unknown]> => {
          const response = await fetch("direct-stream", {
            method: "POST",
            headers: { Authorization: `Basic ${btoa(credentials)}` },
          });
          return [response.status, await response.json()];
        };
        return {
          stranger: await negotiate("mallory:anything"),
          wrong: await negotiate("bob:wonderland"),
          none: [(await fetch("direct-stream", { method: "POST" })).status, null],
          known: await negotiate("bob:builder"),
        };
      });
      for (const refused of [answers.stranger, answers.wrong]) {
        expect(refused[0]).toBe(401);
        expect(refused[1]).toMatchObject({ error: { reason: "login_required" } });
        expect(JSON.stringify(refused[1])).not.toContain("token\":");
      }
      expect(answers.none[0]).toBe(401);
      expect(answers.known[0]).toBe(200); // its API takes HTTP Basic too
      expect(answers.known[1]).toMatchObject({ supported: true });
    } finally {
      await context.close();
    }
  });
});

describe("the example app with UNSLOTH_DIRECT_STREAM=0", () => {
  let example: Example;

  beforeAll(async () => {
    example = await startExample({ UNSLOTH_DIRECT_STREAM: "0" });
  });

  afterAll(async () => {
    await example?.stop();
  });

  it("streams the reply through its own baseline", async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    const seen = origins(page);
    try {
      await logIn(page, example.url, "bob", "builder");
      const { lane, reply } = await ask(page, "Say hello.");
      expect(lane).toBe("fallback");
      expect(reply.trim()).not.toBe("");
      expect([...seen]).toEqual([new URL(example.url).origin]); // never the lane
    } catch (error) {
      await page.screenshot({ path: artifact("example-toggle-off.png") });
      throw error;
    } finally {
      await context.close();
    }
  });
});
