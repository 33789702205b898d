// The chat page under a long streamed reply, in headless Chromium (Debian's): a fake upstream serves
// the built page (broker/static, with the broker's CSP) and streams a 2,000-token Markdown reply at
// 100 tokens/s on the direct lane, in llama-server's chunk format. A Chrome trace of the run gives the
// main thread's script time in each 60 Hz frame window (max, p95; the Send click's own frame apart) and
// its whole task time; the page gives its first render (first contentful paint) and the time from Send
// to the first reply text.
//
// Not a test: nothing here passes or fails. Run `npm run build` first, then `node bench/page-stream.mjs`
// (E2E_CHROMIUM names another Chromium; BENCH_TOKENS and BENCH_RATE change the reply).
import { launch, replyTokens, serve } from "./fake-upstream.mjs";

const TOKENS = Number(process.env.BENCH_TOKENS ?? 2000);
const RATE = Number(process.env.BENCH_RATE ?? 100);
const FRAME_US = 1_000_000 / 60;
const SCRIPT = new Set(["FunctionCall", "EvaluateScript", "v8.evaluateModule", "TimerFire", "FireAnimationFrame", "EventDispatch", "RunMicrotasks", "v8.run"]);

/** Sum each thread's top-level events (nested ones are inside their parent's time) per frame window. */
function perFrame(events, names, from, to) {
  const windows = new Map();
  let end = -1;
  for (const event of events) {
    if (!names(event) || event.ph !== "X" || event.ts < from || event.ts > to) continue;
    if (event.ts < end) continue; // nested in the previous top-level event
    end = event.ts + (event.dur ?? 0);
    const index = Math.floor((event.ts - from) / FRAME_US);
    windows.set(index, (windows.get(index) ?? 0) + (event.dur ?? 0) / 1000);
  }
  return [...windows.values()].sort((a, b) => a - b);
}

/** The five longest script events, with what ran (a function's name and file, where the trace says). */
function longest(events, from, to) {
  return events
    .filter((event) => SCRIPT.has(event.name) && event.ph === "X" && event.ts >= from && event.ts <= to)
    .sort((a, b) => (b.dur ?? 0) - (a.dur ?? 0))
    .slice(0, 5)
    .map((event) => {
      const data = event.args?.data ?? {};
      const where = [data.functionName, (data.url ?? "").split("/").pop(), data.type].filter(Boolean).join(" ");
      return `${event.name} ${((event.dur ?? 0) / 1000).toFixed(1)} ms at +${((event.ts - from) / 1e6).toFixed(2)} s ${where} ${inside(events, event)}`.trim();
    });
}

/** What took time inside `outer`: the style and layout it forced, by name (the rest is script). */
function inside(events, outer) {
  const end = outer.ts + (outer.dur ?? 0);
  const sums = new Map();
  for (const event of events) {
    if (event.ph !== "X" || event.ts < outer.ts || event.ts > end || event === outer) continue;
    if (!["Layout", "UpdateLayoutTree", "ParseHTML", "HitTest", "v8.compile", "MajorGC", "MinorGC", "V8.GC_SCAVENGER", "BlinkGC.AtomicPhase"].includes(event.name)) continue;
    sums.set(event.name, (sums.get(event.name) ?? 0) + (event.dur ?? 0) / 1000);
  }
  return [...sums].map(([name, ms]) => `${name} ${ms.toFixed(1)} ms`).join(", ");
}

const p = (sorted, q) => (sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]);

async function main() {
  const server = await serve(() => replyTokens(TOKENS), RATE);
  const base = `http://127.0.0.1:${server.address().port}/`;
  const browser = await launch();
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  await page.goto(base);
  await page.waitForSelector("#prompt");
  const paint = await page.evaluate(() => {
    const fcp = performance.getEntriesByName("first-contentful-paint")[0];
    const nav = performance.getEntriesByType("navigation")[0];
    return { fcp: fcp?.startTime ?? null, domContentLoaded: nav?.domContentLoadedEventEnd ?? null };
  });
  await browser.startTracing(page, { categories: ["devtools.timeline", "v8.execute", "disabled-by-default-devtools.timeline"] });
  await page.fill("#prompt", "Write a long answer with headings, lists, code and tables.");
  const sent = await page.evaluate(() => {
    window.__firstText = null;
    const list = document.getElementById("messages");
    new MutationObserver(() => {
      if (window.__firstText === null && list.querySelector("li.assistant .markdown")?.textContent) window.__firstText = performance.now();
    }).observe(list, { childList: true, subtree: true, characterData: true });
    document.getElementById("send").click();
    return performance.now();
  });
  await page.locator("li.assistant[data-state='done']").waitFor({ timeout: (TOKENS / RATE + 60) * 1000 });
  const done = await page.evaluate(() => performance.now());
  const firstText = await page.evaluate(() => window.__firstText);
  const trace = JSON.parse((await browser.stopTracing()).toString("utf8"));
  const events = trace.traceEvents.sort((a, b) => a.ts - b.ts);
  // The renderer's main thread: the thread with the most script events.
  const counts = new Map();
  for (const event of events) if (SCRIPT.has(event.name)) counts.set(`${event.pid}:${event.tid}`, (counts.get(`${event.pid}:${event.tid}`) ?? 0) + 1);
  const main = [...counts.entries()].sort((a, b) => b[1] - a[1])[0][0];
  const mine = events.filter((event) => `${event.pid}:${event.tid}` === main);
  const from = mine.find((event) => event.name === "EventDispatch")?.ts ?? mine[0].ts;
  const to = mine.at(-1).ts;
  const script = perFrame(mine, (event) => SCRIPT.has(event.name), from, to);
  // The Send click's own frame: the script in the 60 Hz window that starts with the click.
  const click = mine.find((event) => event.name === "EventDispatch" && event.args?.data?.type === "click")?.ts ?? from;
  const sendFrame = perFrame(mine, (event) => SCRIPT.has(event.name), click, click + FRAME_US - 1);
  const tasks = perFrame(mine, (event) => event.name === "RunTask", from, to);
  const text = await page.locator("li.assistant .markdown").textContent();
  const result = {
    tokens: TOKENS,
    rate: RATE,
    reply_chars: text.length,
    stream_seconds: Number(((done - sent) / 1000).toFixed(2)),
    first_contentful_paint_ms: paint.fcp === null ? null : Number(paint.fcp.toFixed(1)),
    dom_content_loaded_ms: paint.domContentLoaded === null ? null : Number(paint.domContentLoaded.toFixed(1)),
    send_to_first_text_ms: firstText === null ? null : Number((firstText - sent).toFixed(1)),
    frames_with_script: script.length,
    script_ms_per_frame: { max: Number(p(script, 1).toFixed(2)), p95: Number(p(script, 0.95).toFixed(2)), p50: Number(p(script, 0.5).toFixed(2)) },
    main_thread_task_ms_per_frame: { max: Number(p(tasks, 1).toFixed(2)), p95: Number(p(tasks, 0.95).toFixed(2)) },
    frames_over_16ms_of_script: script.filter((ms) => ms > 16).length,
    send_frame_script_ms: Number((sendFrame[0] ?? 0).toFixed(2)),
    longest_script_events: longest(mine, from, to),
  };
  console.log(JSON.stringify(result, null, 2));
  await browser.close();
  server.close();
}

await main();
