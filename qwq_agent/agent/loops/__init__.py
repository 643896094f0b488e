"""Circular-reasoning detection for streamed reasoning: signals, their combiner, and the texts that
steer the model out of the loop. `qwq_agent.agent.loop_detector` re-exports the public names."""
