"""The avatar through the running kernel: tags split across tokens never reach any surface's text
or the history, ``avatar`` messages reach only surfaces that asked for them, the conductor drives
the activity around replies and errors, and sprites come from the cache under a rate limit."""

from __future__ import annotations

import itertools

import anyio

from conductor_core.avatar_grammar import AvatarState, Gesture, Mood
from conductor_core.errors import ErrorCode
from conductor_core.protocol import (
    Avatar,
    AvatarCacheStats,
    Cancel,
    Chat,
    ClientPing,
    Done,
    Error,
    HistoryReply,
    HistoryRequest,
    ServerPong,
    SpriteReply,
    SpriteRequest,
    State,
    StatusReply,
    StatusRequest,
    Token,
    Welcome,
)
from conductor_core.testing.fakes import Script, running_conductor
from conductor_core.testing.wire import collect, handshake

TOKENS = ["Hi", " [yo", "lla:wa", "ve] the", "re! [yolla:mood ha", "ppy", "] Array[0] [li", "nk] [", "yolla:bogus] end ["]
CLEAN = "Hi  there!  Array[0] [link]  end ["
FAST = {"limits": {"messages_per_second": 10_000, "message_burst": 10_000}}


async def chat(client, chat_id: str, content: str = "hi"):
    """Send a chat; return (text, token messages, final, avatar messages before the final)."""
    await client.send(Chat(chat_id, content))
    others: list = []
    text, tokens, final = await collect(client, chat_id, others=others)
    return text, tokens, final, [m for m in others if isinstance(m, Avatar)]


async def nothing_else_queued(client) -> None:
    """Nothing is waiting before the answer to a ping."""
    await client.send(ClientPing(99))
    assert await client.receive() == ServerPong(99)


async def history(client, conversation: str = "default") -> list[str]:
    await client.send(HistoryRequest(conversation))
    reply = await client.receive()
    assert isinstance(reply, HistoryReply)
    return [m.content for m in reply.messages if m.role == "assistant"]


def commands_of(messages: list[Avatar]) -> list:
    return [c for m in messages for c in m.commands]


async def test_split_tags_are_clean_everywhere_and_avatar_messages_reach_only_capable_surfaces():
    async with running_conductor() as kernel:
        fake = kernel.conductor.backends["fake"]
        async with kernel.connect() as web, kernel.connect() as cli:
            welcome = await handshake(web, capabilities=["avatar", "state"])
            assert isinstance(welcome, Welcome) and welcome.avatar == AvatarState()
            plain = await handshake(cli)
            assert isinstance(plain, Welcome) and plain.avatar is None

            fake.push(Script(tokens=TOKENS))
            text, _, final, avatars = await chat(web, "w1")
            assert isinstance(final, Done) and text == CLEAN
            assert commands_of(avatars) == [Gesture("wave", 1500), Mood("happy")]
            assert all(m.id == "w1" for m in avatars)
            idle = await web.receive()
            assert isinstance(idle, Avatar) and idle.state.activity == "idle" and idle.state.mood == "happy"
            assert await web.receive() == State("w1", "idle")

            fake.push(Script(tokens=TOKENS))
            text, _, final, avatars = await chat(cli, "c1")
            assert isinstance(final, Done) and text == CLEAN and avatars == []
            await nothing_else_queued(cli)

            assert await history(web) == [CLEAN]
            assert await history(cli) == [CLEAN]


async def test_every_split_of_a_tagged_reply_through_the_kernel():
    reply = "Sure [yolla:wave] ok [yolla:happy]!"
    clean, commands = "Sure  ok !", [Gesture("wave", 1500), Mood("happy")]
    cuts = [[i] for i in range(len(reply) + 1)]
    cuts += [[i, j] for i, j in itertools.combinations(range(0, len(reply) + 1, 3), 2)]
    async with running_conductor({"backends": {"fake": {"type": "fake"}}, **FAST}) as kernel:
        fake = kernel.conductor.backends["fake"]
        async with kernel.connect() as web:
            await handshake(web, capabilities=["avatar"])
            for n, cut in enumerate(cuts):
                bounds = [0, *cut, len(reply)]
                fake.push(Script(tokens=[reply[a:b] for a, b in itertools.pairwise(bounds)]))
                text, _, final, avatars = await chat(web, f"c{n}", content=f"q{n}")
                assert isinstance(final, Done), final
                assert (text, commands_of(avatars)) == (clean, commands), cut
                assert (await web.receive()).state.activity == "idle"
            assert set(await history(web)) == {clean}


async def test_activity_around_a_reply():
    async with running_conductor() as kernel, kernel.connect() as web:
        kernel.conductor.backends["fake"].push(Script(tokens=["one", " two"], ttft=0.01))
        await handshake(web, capabilities=["avatar"])
        _, _, final, avatars = await chat(web, "a")
        assert isinstance(final, Done)
        end = await web.receive()
        assert [m.state.activity for m in [*avatars, end]] == ["thinking", "talking", "idle"]
        assert all(m.commands == [] for m in avatars)


async def test_activity_is_oops_after_an_error_mid_stream_and_held_text_is_released():
    async with running_conductor() as kernel, kernel.connect() as web:
        kernel.conductor.backends["fake"].push(Script(tokens=["ok [yol", "la:wave]", "never"], fail_after=1))
        await handshake(web, capabilities=["avatar"])
        text, _, final, avatars = await chat(web, "a")
        assert isinstance(final, Error) and final.code == ErrorCode.BACKEND_ERROR
        assert text == "ok [yol"  # the cut came inside a possible tag: it is text, not lost
        end = await web.receive()
        assert [m.state.activity for m in [*avatars, end]] == ["thinking", "talking", "oops"]
        assert await history(web) == ["ok [yol"]


async def test_activity_is_oops_after_an_error_before_the_first_token():
    async with running_conductor() as kernel, kernel.connect() as web:
        kernel.conductor.backends["fake"].push(Script(fail_before_first="error"))
        await handshake(web, capabilities=["avatar"])
        _, _, final, avatars = await chat(web, "a")
        assert isinstance(final, Error)
        end = await web.receive()
        assert [m.state.activity for m in [*avatars, end]] == ["thinking", "oops"]
        # the next reply starts from thinking again
        _, _, final, avatars = await chat(web, "b")
        assert isinstance(final, Done) and avatars[0].state.activity == "thinking"


async def test_a_cancelled_reply_goes_back_to_idle():
    async with running_conductor() as kernel, kernel.connect() as web:
        kernel.conductor.backends["fake"].push(Script(tokens=["a", "b", "c"], hang_after=1))
        await handshake(web, capabilities=["avatar"])
        await web.send(Chat("a", "hi"))
        seen = []
        while not (isinstance(m := await web.receive(), Token)):
            seen.append(m)
        await web.send(Cancel("a"))
        _, _, final = await collect(web, "a", others=seen)
        assert isinstance(final, Error) and final.code == ErrorCode.CANCELLED
        end = await web.receive()
        assert [m.state.activity for m in [*seen, end]] == ["thinking", "talking", "idle"]


async def test_the_command_cap_is_per_reply():
    config = {"backends": {"fake": {"type": "fake"}}, "avatar": {"max_commands_per_reply": 3}}
    async with running_conductor(config) as kernel, kernel.connect() as web:
        fake = kernel.conductor.backends["fake"]
        fake.push(Script(tokens=["[yolla:wave]"] * 5 + ["done"]), Script(tokens=["[yolla:nod]"] * 2))
        await handshake(web, capabilities=["avatar"])
        text, _, final, avatars = await chat(web, "a")
        assert text == "done" and len(commands_of(avatars)) == 3
        await web.receive()
        _, _, final, avatars = await chat(web, "b")
        assert commands_of(avatars) == [Gesture("nod", 1000)] * 2  # a new reply, a new count


async def test_a_custom_prefix_and_a_disabled_avatar():
    config = {"backends": {"fake": {"type": "fake"}}, "avatar": {"prefix": "axo"}}
    async with running_conductor(config) as kernel, kernel.connect() as web:
        kernel.conductor.backends["fake"].push(Script(tokens=["[ax", "o:wave]hi [yolla:wave]"]))
        await handshake(web, capabilities=["avatar"])
        text, _, _, avatars = await chat(web, "a")
        assert text == "hi [yolla:wave]" and commands_of(avatars) == [Gesture("wave", 1500)]

    config = {"backends": {"fake": {"type": "fake"}}, "avatar": {"enabled": False}}
    async with running_conductor(config) as kernel, kernel.connect() as web:
        kernel.conductor.backends["fake"].push(Script(tokens=["[yol", "la:wave] hi"]))
        welcome = await handshake(web, capabilities=["avatar"])
        assert welcome.avatar is None and kernel.conductor.avatar_cache is None
        text, _, _, avatars = await chat(web, "a")
        assert text == "[yolla:wave] hi" and avatars == []
        await web.send(SpriteRequest("happy"))
        error = await web.receive()
        assert isinstance(error, Error) and error.code == ErrorCode.BAD_MESSAGE and "disabled" in error.message
        await web.send(StatusRequest())
        assert (await web.receive()).avatar_cache is None


# ---------------------------------------------------------------- sprites and the cache


async def test_sprites_come_from_the_cache_and_status_shows_it():
    async with running_conductor() as kernel, kernel.connect() as web:
        await handshake(web)
        await web.send(SpriteRequest("glad", "big"))  # aliases: happy, large
        first = await web.receive()
        assert isinstance(first, SpriteReply) and first.key == "axolotl/happy/large/0"
        assert (first.width, first.height, len(first.cells)) == (24, 12, 24 * 12)
        await web.send(SpriteRequest("happy", "large"))
        assert await web.receive() == first
        await web.send(StatusRequest())
        status = await web.receive()
        assert isinstance(status, StatusReply) and isinstance(status.avatar_cache, AvatarCacheStats)
        stats = status.avatar_cache
        assert (stats.type, stats.entries, stats.pinned, stats.hits, stats.misses) == ("memory", 1, 1, 1, 1)
        assert 0 < stats.bytes <= stats.budget_bytes == 10 * 1024 * 1024


async def test_bad_sprite_requests_say_what_is_wrong():
    async with running_conductor() as kernel, kernel.connect() as web:
        await handshake(web)
        for request, words in [
            (SpriteRequest("furious"), "unknown mood 'furious'"),
            (SpriteRequest("happy", "enormous"), "unknown size 'enormous'"),
            (SpriteRequest("happy", "small", 99), "sprite.variant: must be 0..7"),
        ]:
            await web.send(request)
            error = await web.receive()
            assert isinstance(error, Error) and error.code == ErrorCode.BAD_MESSAGE and words in error.message
            assert error.id is None


async def test_sprite_requests_are_rate_limited_per_session():
    config = {"backends": {"fake": {"type": "fake"}}, "avatar": {"sprite_requests_per_minute": 2}}
    async with running_conductor(config) as kernel:
        async with kernel.connect() as one, kernel.connect() as two:
            await handshake(one)
            await handshake(two)
            for _ in range(2):
                await one.send(SpriteRequest("calm"))
                assert isinstance(await one.receive(), SpriteReply)
            await one.send(SpriteRequest("calm"))
            error = await one.receive()
            assert isinstance(error, Error) and error.code == ErrorCode.RATE_LIMITED and error.retryable
            assert error.retry_after_ms and 0 < error.retry_after_ms <= 30_000
            assert "2 sprite requests a minute" in error.message
            await two.send(SpriteRequest("calm"))  # another session has its own allowance
            assert isinstance(await two.receive(), SpriteReply)


async def test_a_sessions_variants_are_dropped_when_it_disconnects():
    async with running_conductor() as kernel:
        cache = kernel.conductor.avatar_cache
        async with kernel.connect() as web:
            await handshake(web)
            for variant in (0, 3, 5):
                await web.send(SpriteRequest("shy", "medium", variant))
                assert (await web.receive()).variant == variant
            assert cache.stats().entries == 3 and len(cache._sessions) == 1
        with anyio.fail_after(5):
            while kernel.conductor.connections:
                await anyio.sleep(0.001)
        stats = cache.stats()
        assert (stats.entries, stats.pinned) == (1, 1)  # the shared base sprite stays
        assert cache._sessions == {}


# ---------------------------------------------------------------- wire forms


def test_avatar_messages_round_trip_in_both_codecs():
    from conductor_core.avatar_grammar import Hide, Move, Point, React, Show, Size, Stop, Wander
    from conductor_core.protocol import decode_client, decode_server, encode
    from conductor_core.sprites import render_sprite

    commands = [Mood("shy"), Gesture("peek", 2000, "left"), React("tada", 1500), Move(1.0, 2.0, "follow"),
                Size("tiny"), Show(), Hide(), Wander(), Stop(), Point(3.0, 4.0)]  # fmt: skip
    server = [
        Avatar(AvatarState(activity="talking"), id="c", commands=commands),
        Avatar(AvatarState()),
        Welcome("s", 1, "0.1.0", avatar=AvatarState(mood="happy")),
        render_sprite("confused", "tiny", 6),
        StatusReply("0.1.0", 1.0, 0, 0, {}, "priority", [], AvatarCacheStats("memory", 1, 2, 3, 1, 5, 6, 7)),
    ]
    for codec in ("json", "msgpack"):
        for message in server:
            assert decode_server(encode(message, codec), codec) == message
        for message in (SpriteRequest("happy"), SpriteRequest("calm", "large", 7)):
            assert decode_client(encode(message, codec), codec) == message


def test_a_browser_can_write_a_sprite_request_and_old_peers_still_interoperate():
    from conductor_core.errors import BadMessage
    from conductor_core.protocol import decode_client, decode_server

    assert decode_client(b'{"type":"sprite","mood":"happy"}', "json") == SpriteRequest("happy", "small", 0)
    for bad in (b'{"type":"sprite"}', b'{"type":"sprite","mood":"happy","variant":"x"}', b'{"type":"avatar"}'):
        try:
            decode_client(bad, "json")
        except BadMessage:
            pass
        else:
            raise AssertionError(bad)
    # a welcome from a server without the avatar still decodes; unknown state fields are ignored
    old = decode_server(b'{"type":"welcome","session":"s","protocol":1,"server_version":"0.0.9"}', "json")
    assert old.avatar is None
    newer = b'{"type":"avatar","state":{"mood":"calm","activity":"sulking","glow":1},"id":"c"}'
    assert decode_server(newer, "json").state.activity == "sulking"
