// Generated from llama_direct/lanes.py by scripts/lanes_ts.py; do not edit by hand.
// tests/unit/test_lanes_ts.py fails when this file and the registry differ.

/** Every lane route: method, path under the lane, scope, body format, conversation use, length cap. */
export const LANE_ROUTES = {
  chat: {"method": "POST", "path": "/v1/chat/completions", "scope": "chat", "body": "chat", "conversation": "opens", "lengthCap": "max_tokens", "query": []},
  resume: {"method": "GET", "path": "/v1/stream", "scope": "resume", "body": null, "conversation": "resumes", "lengthCap": null, "query": ["conv_id", "from"]},
  cancel: {"method": "DELETE", "path": "/v1/stream", "scope": "cancel", "body": null, "conversation": "stops", "lengthCap": null, "query": ["conv_id"]},
} as const;

export type LaneRouteName = keyof typeof LANE_ROUTES;
