// Generated from llama_direct/lanes.py by scripts/lanes_ts.py; do not edit by hand.
// tests/unit/test_lanes_ts.py fails when this file and the registry differ.

/** Every lane route: method, path under the lane, scope, body format, conversation use, length cap. */
export const LANE_ROUTES = {
  chat: {"method": "POST", "path": "/v1/chat/completions", "scope": "chat", "body": "chat", "conversation": "opens", "lengthCap": "max_tokens", "query": []},
  resume: {"method": "GET", "path": "/v1/stream", "scope": "resume", "body": null, "conversation": "resumes", "lengthCap": null, "query": ["conv_id", "from"]},
  cancel: {"method": "DELETE", "path": "/v1/stream", "scope": "cancel", "body": null, "conversation": "stops", "lengthCap": null, "query": ["conv_id"]},
  responses: {"method": "POST", "path": "/v1/responses", "scope": "responses", "body": "responses", "conversation": "opens", "lengthCap": "max_output_tokens", "query": []},
  messages: {"method": "POST", "path": "/v1/messages", "scope": "messages", "body": "messages", "conversation": "opens", "lengthCap": "max_tokens", "query": []},
  completions: {"method": "POST", "path": "/v1/completions", "scope": "completions", "body": "completions", "conversation": "opens", "lengthCap": "max_tokens", "query": []},
  embeddings: {"method": "POST", "path": "/v1/embeddings", "scope": "embeddings", "body": "embeddings", "conversation": null, "lengthCap": null, "query": []},
  rerank: {"method": "POST", "path": "/v1/rerank", "scope": "rerank", "body": "rerank", "conversation": null, "lengthCap": null, "query": []},
  chat_input_tokens: {"method": "POST", "path": "/v1/chat/completions/input_tokens", "scope": "tokens", "body": "chat_count", "conversation": null, "lengthCap": null, "query": []},
  responses_input_tokens: {"method": "POST", "path": "/v1/responses/input_tokens", "scope": "tokens", "body": "responses_count", "conversation": null, "lengthCap": null, "query": []},
  messages_count_tokens: {"method": "POST", "path": "/v1/messages/count_tokens", "scope": "tokens", "body": "messages_count", "conversation": null, "lengthCap": null, "query": []},
} as const;

export type LaneRouteName = keyof typeof LANE_ROUTES;

/** On a baseline request: the token of the lane grant the client could not use, whose reservation the
 * baseline then serves under instead of reserving another. */
export const UNUSED_GRANT_HEADER = "X-Unused-Grant";
