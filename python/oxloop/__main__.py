"""``python -m oxloop``: run a script, a module or an asyncio REPL on oxloop (see ``_runner``)."""

from oxloop._runner import main

if __name__ == '__main__':
    main()
