"""Development tools: stand-ins for platform services modelseal talks to in production."""
