"""Host-side web access for tools: guarded HTTP fetching, readable-text extraction, search providers."""
