/**
 * The one reader of the broker's negotiation answer on the TypeScript side (`chat-run`,
 * `direct_fetch`), the twin of `llama_direct.documents.parse_negotiation` in Python: both read the
 * same definitions (`documents.ts`, generated from the contract), so the clients cannot drift apart
 * on what makes a grant usable.
 */

import type { NegotiationAnswer } from "./documents.ts";

function text(value: unknown): string {
  return typeof value === "string" ? value : "";
}

function whole(value: unknown): number {
  return typeof value === "number" && Number.isInteger(value) ? value : 0;
}

/**
 * A 200 answer's parsed JSON: the grant when it has what a lane request needs (a string `url` and
 * `token`; the `url` without its trailing slash), else the unsupported answer; null for a value that
 * is not an object. Fields of another type read as their empty value.
 */
export function parseNegotiation(raw: unknown): NegotiationAnswer | null {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) return null;
  const answer = raw as Record<string, unknown>;
  const fallback_url = text(answer.fallback_url);
  const { url, token, grant } = answer;
  if (answer.supported === true && typeof url === "string" && typeof token === "string") {
    return {
      supported: true,
      route: text(answer.route),
      url: url.replace(/\/+$/, ""),
      token,
      expires_at: whole(answer.expires_at),
      ttl_seconds: whole(answer.ttl_seconds),
      model: text(answer.model),
      conversation_id: typeof answer.conversation_id === "string" ? answer.conversation_id : null,
      scope: text(answer.scope),
      grant: typeof grant === "object" && grant !== null && !Array.isArray(grant) ? (grant as Record<string, unknown>) : {},
      fallback_url,
    };
  }
  return { supported: false, route: text(answer.route), reason: text(answer.reason), message: text(answer.message), fallback_url };
}
