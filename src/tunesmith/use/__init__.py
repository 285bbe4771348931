"""Use: the finetuned model at work: generation, chat sessions, the OpenAI-compatible server, export."""
