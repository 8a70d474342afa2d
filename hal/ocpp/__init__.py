"""The OCPP 1.6J driver: wallboxes that connect to gridcharge's central system over WebSocket.

``central`` is the server (one asyncio thread, a ``hal.types.Link``), ``access`` decides who may
connect, ``session`` answers one connected box, ``charger`` is the ``hal.types.Charger`` the
controller sees, ``mapping`` turns OCPP messages into readings (pure). The ``ocpp`` and
``websockets`` packages are imported only in this package.
"""
