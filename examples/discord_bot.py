"""An example Discord bot that forwards slash commands to Relay.

``/chat prompt``, ``/image prompt`` and ``/video prompt`` are deferred at once (Discord wants
an answer within 3 s), then forwarded to Relay's ``POST /api/bot/requests``. Relay answers
later by posting to a webhook:

- chat and image: the interaction's follow-up URL
  (``https://discord.com/api/webhooks/{application_id}/{token}``, valid 15 minutes), so the
  answer replaces the bot's "thinking..." message;
- video (minutes long): the channel webhook in ``RELAY_BOT_VIDEO_WEBHOOK`` (or, unset,
  Relay's default Discord destination block); the bot says the video is on its way.

Over a cooldown or daily limit Relay refuses (429) and posts the refusal, with when to retry,
to the webhook it was given; the bot itself says nothing more, so the user reads it once.

Run it (from the repository root; discord.py is not a Relay dependency)::

    pip install discord.py
    export DISCORD_TOKEN=...             # the bot's token (Discord developer portal)
    export RELAY_URL=http://127.0.0.1:8000
    export RELAY_API_TOKEN=...           # Relay's RELAY_API_TOKEN, if it has one
    export RELAY_BOT_VIDEO_WEBHOOK=...   # optional: channel webhook for videos
    python examples/discord_bot.py

Relay accepts webhooks on Discord's own hosts (others: ``RELAY_WEBHOOK_ALLOWED_HOSTS``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import discord
from discord import app_commands

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere
from api.client import RelayBotClient, RelayError, Submitted

log = logging.getLogger("relay.discord_bot")
relay = RelayBotClient(
    os.environ.get("RELAY_URL", "http://127.0.0.1:8000"),
    token=os.environ.get("RELAY_API_TOKEN") or None,
    timeout=10.0,
)
VIDEO_WEBHOOK = os.environ.get("RELAY_BOT_VIDEO_WEBHOOK") or None

client = discord.Client(intents=discord.Intents.default())
tree = app_commands.CommandTree(client)


def _webhook_for(interaction: discord.Interaction, kind: str) -> str | None:
    """Where Relay posts the answer: the interaction follow-up URL, or for videos (longer
    than its 15 minutes) the channel webhook (``None``: Relay's default destination)."""
    if kind == "video":
        return VIDEO_WEBHOOK
    return f"https://discord.com/api/webhooks/{interaction.application_id}/{interaction.token}"


async def forward(interaction: discord.Interaction, kind: str, prompt: str) -> None:
    """Defer, hand the request to Relay (in a thread: the client blocks)."""
    await interaction.response.defer(thinking=True)
    channel = getattr(interaction.channel, "name", None) or "direct-message"
    try:
        sent: Submitted = await asyncio.to_thread(
            relay.submit,
            kind,
            prompt,
            user_id=str(interaction.user.id),
            channel=channel,
            guild=str(interaction.guild_id) if interaction.guild_id else None,
            webhook_url=_webhook_for(interaction, kind),
        )
    except RelayError as err:
        log.warning("Relay did not take a %s request: %s", kind, err)
        await interaction.followup.send(f"Sorry, {err.message}", ephemeral=True)
        return
    if not sent.accepted:  # Relay posts the refusal to the follow-up URL itself
        log.info("Relay refused a %s request: %s", kind, sent.refusal)
        return
    log.info("%s request %s queued on %s", kind, sent.request_id, sent.pool)
    if kind == "video":
        await interaction.followup.send("Your video is on its way; it will be posted here.")


@tree.command(name="chat", description="Ask the chat model")
@app_commands.describe(prompt="What to ask")
async def chat(interaction: discord.Interaction, prompt: str) -> None:
    await forward(interaction, "chat", prompt)


@tree.command(name="image", description="Generate an image")
@app_commands.describe(prompt="What to draw")
async def image(interaction: discord.Interaction, prompt: str) -> None:
    await forward(interaction, "image", prompt)


@tree.command(name="video", description="Generate a short video (takes minutes)")
@app_commands.describe(prompt="What to film")
async def video(interaction: discord.Interaction, prompt: str) -> None:
    await forward(interaction, "video", prompt)


@client.event
async def on_ready() -> None:
    await tree.sync()  # registers the slash commands (global commands may take a while)
    log.info("logged in as %s; slash commands synced", client.user)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    try:
        client.run(os.environ["DISCORD_TOKEN"])
    finally:
        relay.close()
