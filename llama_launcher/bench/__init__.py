"""`llama-direct bench`: the direct lane measured side by side with raw llama-server and two proxies."""
