"""The client library asks for avatar sprites (issue 9's surface side)."""

from __future__ import annotations

import pytest

from conductor_core.client import Client, ClientError
from conductor_core.testing.fakes import running_conductor


async def test_client_gets_a_sprite_and_a_clear_error_for_a_bad_request():
    async with running_conductor() as kernel:
        async with kernel.connect() as channel:
            async def connect():
                return channel

            async with Client(connect, capabilities=["avatar"]) as client:
                sprite = await client.sprite("happy", "small")
                assert sprite.width * sprite.height == len(sprite.cells) > 0
                assert sprite.mood == "happy"
                with pytest.raises(ClientError) as info:
                    await client.sprite("furious-beyond-words", "small")
                assert info.value.code == "bad_message"
