/**
 * The example's page: one message, one reply, streamed by the browser client. `streamChat` asks the
 * app for a grant (`direct-stream`, with the session cookie), streams from the lane, and falls back to
 * the app's baseline when the lane is off or fails before the first token.
 */
import { streamChat } from "../../../frontend/src/index.ts";

function element(id: string): HTMLElement {
  const found = document.getElementById(id);
  if (found === null) throw new Error(`the page has no #${id}`);
  return found;
}

async function showUser(): Promise<void> {
  const answer = (await (await fetch("api/me")).json()) as { user?: string };
  element("user").textContent = answer.user ?? "";
}

async function ask(text: string): Promise<void> {
  const reply = element("reply");
  const lane = element("lane");
  const error = element("error");
  reply.textContent = "";
  error.textContent = "";
  lane.textContent = "streaming";
  for await (const event of streamChat({ messages: [{ role: "user", content: text }], max_tokens: 48 })) {
    if (event.type === "text_delta") reply.textContent += event.text;
    else if (event.type === "error") error.textContent = event.message;
    else if (event.type === "finish") lane.textContent = event.lane;
  }
}

element("ask").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = element("message") as HTMLInputElement;
  void ask(input.value);
});
void showUser();
