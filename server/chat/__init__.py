"""Chat: a conversation in, a routed and generated answer out (`service.ChatService`), and how the
OpenAI messages of a request become the turns routing reads (`conversation`)."""
