/**
 * The real stack for browser tests: `llama-direct serve` on a free port with a throw-away data dir,
 * and headless Chromium (Debian's, never a downloaded one). Every start has a matching stop.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { get } from "node:http";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { type Browser, chromium } from "playwright-core";

export const REPO = resolve(fileURLToPath(new URL("../../..", import.meta.url)));
export const ARTIFACTS = join(REPO, "test-artifacts");
const SERVE = join(REPO, ".venv", "bin", "llama-direct");
const READY = /^llama-direct ready: (https?:\/\/\S+)$/m;
const RUNTIME = /runtime dir=(\S+)/;
const READY_TIMEOUT_MS = Number(process.env.E2E_READY_TIMEOUT_MS ?? 180_000);
const STOP_TIMEOUT_MS = 20_000;

export interface Stack {
  /** The one-time login URL from the ready line (carries the access token). */
  loginUrl: string;
  /** The page's own URL, without the token. */
  baseUrl: string;
  /** The throw-away data dir, for `llama-direct users … --data-dir` while it runs. */
  dataDir: string;
  /** The gate's private `GET /health` (slots busy or idle), read on its unix socket. */
  health(): Promise<GateHealth>;
  /** The gate process's pid, looked up now: the parent restarts a gate that dies. */
  gatePid(): number | undefined;
  stop(): Promise<void>;
}

export interface GateHealth {
  gate: string;
  model_ready: boolean;
  slots: { total: number; busy: number };
}

function healthAt(socketPath: string): Promise<GateHealth> {
  return new Promise((resolve, reject) => {
    const request = get({ socketPath, path: "/health", timeout: 5_000 }, (response) => {
      let body = "";
      response.on("data", (data: Buffer) => (body += data.toString()));
      response.on("end", () => {
        try {
          resolve(JSON.parse(body) as GateHealth);
        } catch (error) {
          reject(error);
        }
      });
    });
    request.on("timeout", () => request.destroy(new Error("gate health timed out")));
    request.on("error", reject);
  });
}

function cmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "latin1").split("\0").join(" ");
  } catch {
    return "";
  }
}

/** Every process below `root`, from /proc (Linux only, as the launcher is). */
function descendants(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "latin1");
      const parent = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      children.set(parent, [...(children.get(parent) ?? []), Number(entry)]);
    } catch {
      // the process ended while we looked
    }
  }
  const found: number[] = [];
  const todo = [root];
  while (todo.length > 0) {
    for (const child of children.get(todo.pop() as number) ?? []) {
      found.push(child);
      todo.push(child);
    }
  }
  return found;
}

/** The end of each process's log in a stack's data dir: what a start that never got ready was doing. */
function logTails(dataDir: string): string {
  const logs = join(dataDir, "logs");
  if (!existsSync(logs)) return "(no logs)";
  return readdirSync(logs)
    .map((name) => `--- ${name} ---\n${readFileSync(join(logs, name), "utf8").slice(-3000)}`)
    .join("\n");
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((done) => child.once("exit", () => done()));
}

/** Start `serve` and wait for its ready line; `args` are extra flags such as `--chat-template think`. */
export async function startStack(args: string[] = [], env: Record<string, string> = {}): Promise<Stack> {
  if (!existsSync(SERVE)) throw new Error(`${SERVE} is missing: install the package into .venv first`);
  const dataDir = mkdtempSync(join(tmpdir(), "ld-e2e-"));
  const extra: string[] = [];
  if (process.env.E2E_LLAMA_SERVER) extra.push("--llama-server", process.env.E2E_LLAMA_SERVER);
  if (process.env.E2E_MODEL) extra.push("--model", process.env.E2E_MODEL);
  const child = spawn(SERVE, ["serve", "--port", "0", "--data-dir", dataDir, ...extra, ...args], {
    cwd: REPO,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  let runtimeDir = "";
  child.stdout?.on("data", (data: Buffer) => (stdout += data.toString()));
  child.stderr?.on("data", (data: Buffer) => {
    const text = data.toString();
    runtimeDir ||= RUNTIME.exec(text)?.[1] ?? "";
    stderr = (stderr + text).slice(-4000);
  });
  const killOnExit = (): void => {
    child.kill("SIGKILL");
  };
  process.once("exit", killOnExit);

  const stop = async (): Promise<void> => {
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), STOP_TIMEOUT_MS);
    await exited(child);
    clearTimeout(timer);
    process.removeListener("exit", killOnExit);
    rmSync(dataDir, { recursive: true, force: true });
  };

  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (!READY.test(stdout)) {
    if (child.exitCode !== null || Date.now() > deadline) {
      const logs = logTails(dataDir); // read before stop() removes the data dir
      await stop();
      throw new Error(`llama-direct serve did not become ready:\n${stderr}\n${logs}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  const loginUrl = READY.exec(stdout)?.[1] ?? "";
  const base = new URL(loginUrl);
  base.search = "";
  // The terminal is quiet (issue 24): the runtime dir is named in serve's log file in the data dir.
  const serveLog = join(dataDir, "logs", "serve.log");
  if (runtimeDir === "" && existsSync(serveLog)) runtimeDir = RUNTIME.exec(readFileSync(serveLog, "utf8"))?.[1] ?? "";
  if (runtimeDir === "") {
    await stop();
    throw new Error("llama-direct serve did not log its runtime dir");
  }
  return {
    loginUrl,
    baseUrl: base.toString(),
    dataDir,
    health: () => healthAt(join(runtimeDir, "gate.sock")),
    gatePid: () => descendants(child.pid ?? -1).find((pid) => cmdline(pid).includes("llama_launcher.gate_process")),
    stop,
  };
}

export function launchBrowser(): Promise<Browser> {
  return chromium.launch({
    executablePath: process.env.E2E_CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-background-networking",
      "--disable-gpu",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
}

export function artifact(name: string): string {
  mkdirSync(ARTIFACTS, { recursive: true });
  return join(ARTIFACTS, name);
}
