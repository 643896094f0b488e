"""Hello, qwq-agent: one agent, one tool of your own, Python in a sandbox, a model server's URL.

QWQ_MODEL_URL=http://127.0.0.1:30000 .venv/bin/python examples/hello.py
"""

import asyncio
import os

from qwq_agent import Agent, SandboxPool, SGLangClient, build_tools, tool


@tool
def population(city: str) -> str:
    """Population of a city.

    Args:
        city: the city's English name
    """
    return {"Paris": "2.1 million", "Tokyo": "14 million"}.get(city, "unknown")


async def main() -> None:
    url = os.environ.get("QWQ_MODEL_URL", "http://127.0.0.1:30000")
    async with SGLangClient(url) as model, SandboxPool(size=1) as pool:
        agent = Agent(model, [*build_tools(["python"]), population], sandbox_pool=pool)
        result = await agent.run("How many more people live in Tokyo than in Paris? Use the tools.")
        print(result.status, result.answer)


if __name__ == "__main__":
    asyncio.run(main())
