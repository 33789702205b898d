// Generated from llama_direct/documents.py by scripts/documents_ts.py; do not edit by hand.
// tests/unit/test_documents_ts.py fails when this file and the definitions differ.

/** A supported negotiation: the lane's base, the token and what it grants. */
export interface Granted {
  supported: true;
  route: string;
  url: string;
  token: string;
  expires_at: number;
  ttl_seconds: number;
  model: string;
  conversation_id: string | null;
  scope: string;
  grant: Record<string, unknown>;
  fallback_url: string;
}

/** The lane cannot serve now: the client sends the same request to `fallback_url`. */
export interface Unsupported {
  supported: false;
  route: string;
  reason: string;
  message: string;
  fallback_url: string;
}

/** One model as a gate or a broker lists it: never a path. */
export interface ModelEntry {
  id: string;
  status: string;
  vision: boolean;
  progress?: number;
  tools?: boolean;
}

/** One model in `GET /v1/models`: OpenAI's fields, then its state. */
export interface ListedModel {
  id: string;
  status: string;
  vision: boolean;
  progress?: number;
  tools?: boolean;
  object: "model";
  created: number;
  owned_by: string;
}

/** `GET /v1/models` on the broker. */
export interface ModelList {
  object: "list";
  data: ListedModel[];
  can_unload?: boolean;
}

/** One row of a user's usage ledger: their requests on one model, route and lane in one UTC day. */
export interface LedgerDay {
  day: string;
  model: string;
  route: string;
  lane: string;
  requests: number;
  prompt_tokens: number;
  completion_tokens: number;
  unseen: number;
}

/** `GET /v1/usage` (`llama_direct.budgets.MY_USAGE_PATH`): the caller's own windows now and ledger rows. */
export interface MyUsage {
  sub: string;
  name: string | null;
  tokens_per_day: number | null;
  tokens_per_minute: number | null;
  day_used: number;
  day_left: number | null;
  minute_used: number;
  minute_left: number | null;
  since: string;
  rows: LedgerDay[];
}

export type NegotiationAnswer = Granted | Unsupported;

export const MY_USAGE_PATH = "/v1/usage";
export const MODEL_UNLOAD_PATH = "/v1/models/unload";
