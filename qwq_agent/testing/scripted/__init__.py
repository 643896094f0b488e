"""The scripted model server's parts; `qwq_agent.testing.scripted_server` is the face to import from."""
