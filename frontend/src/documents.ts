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
}

export type NegotiationAnswer = Granted | Unsupported;
