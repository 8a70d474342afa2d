"""The command line's own work beyond running the service: ``gridcharge read`` (``device_read``,
``readout``, ``read_failure``) and ``gridcharge status`` (``status_command``, ``status_client``,
and the live view ``status_view`` / ``live_screen`` that the demo uses too).
"""
