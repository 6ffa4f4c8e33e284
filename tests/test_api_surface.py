"""oxloop only: the public surface matches asyncio.AbstractEventLoop."""

import asyncio
import inspect

import pytest

PUBLIC_METHODS = sorted(
    name for name, value in vars(asyncio.AbstractEventLoop).items() if not name.startswith('_') and callable(value)
)


@pytest.fixture(scope='module')
def oxloop():
    import oxloop

    return oxloop


def test_api_surface_loop_is_an_event_loop(oxloop):
    assert issubclass(oxloop.Loop, asyncio.AbstractEventLoop)
    assert issubclass(oxloop.Loop, asyncio.BaseEventLoop)
    lp = oxloop.new_event_loop()
    try:
        assert isinstance(lp, oxloop.Loop)
    finally:
        lp.close()


@pytest.mark.parametrize('name', PUBLIC_METHODS)
def test_api_surface_method_exists(oxloop, name):
    attr = inspect.getattr_static(oxloop.Loop, name, None)
    assert attr is not None, f'oxloop.Loop has no {name}()'
    assert callable(getattr(oxloop.Loop, name))


@pytest.mark.parametrize('name', PUBLIC_METHODS)
def test_api_surface_coroutine_methods_match(oxloop, name):
    # A method that is a coroutine function in asyncio must be awaitable on oxloop too,
    # and a plain method must not turn into a coroutine function.
    expected = inspect.iscoroutinefunction(getattr(asyncio.BaseEventLoop, name))
    assert inspect.iscoroutinefunction(getattr(oxloop.Loop, name)) is expected


def test_api_surface_module_exports(oxloop):
    for name in ('Loop', 'EventLoopPolicy', 'install', 'new_event_loop', 'run'):
        assert hasattr(oxloop, name), name
    assert issubclass(oxloop.EventLoopPolicy, asyncio.AbstractEventLoopPolicy)
    policy = oxloop.EventLoopPolicy()
    lp = policy.new_event_loop()
    try:
        assert isinstance(lp, oxloop.Loop)
    finally:
        lp.close()
