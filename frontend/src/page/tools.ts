/**
 * The demo's two tools: one that runs in the browser, one that calls a broker route, so the page
 * shows both kinds of executor that `streamChat` accepts.
 */
import type { ToolExecutor } from "../client.ts";

export const TOOL_SPECS = [
  {
    type: "function",
    function: {
      name: "current_time",
      description: "The current date and time, in a given IANA time zone (default UTC).",
      parameters: {
        type: "object",
        properties: { timezone: { type: "string", description: "An IANA time zone such as Europe/Paris" } },
      },
    },
  },
  {
    type: "function",
    function: {
      name: "echo",
      description: "Sends a short text to the server, which sends it back.",
      parameters: {
        type: "object",
        properties: { text: { type: "string" } },
        required: ["text"],
      },
    },
  },
];

function stringField(args: unknown, name: string): string | undefined {
  if (typeof args !== "object" || args === null) return undefined;
  const value = (args as Record<string, unknown>)[name];
  return typeof value === "string" ? value : undefined;
}

/** Runs in the browser; an unknown time zone throws, which the tool loop reports as a failed tool. */
export const currentTime: ToolExecutor = (args) => {
  const timezone = stringField(args, "timezone") ?? "UTC";
  const now = new Date();
  const local = new Intl.DateTimeFormat("en-GB", {
    timeZone: timezone,
    dateStyle: "full",
    timeStyle: "long",
  }).format(now);
  return { timezone, local, iso: now.toISOString() };
};

/** `POST tools/echo` (relative: a reverse proxy's prefix is kept) with the page's session cookie. */
export const echo: ToolExecutor = async (args, { signal }) => {
  const text = stringField(args, "text") ?? "";
  const response = await fetch("tools/echo", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ text }),
    signal,
  });
  if (!response.ok) throw new Error("echo route failed");
  return (await response.json()) as unknown;
};

export const EXECUTORS: Record<string, ToolExecutor> = { current_time: currentTime, echo };
