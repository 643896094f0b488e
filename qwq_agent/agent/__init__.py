"""The agent: chat format, tokenizer, parser, model clients and the async loop."""
