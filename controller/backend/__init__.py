"""gridcharge as an OCPP 1.6J charge point towards the energy supplier's backend: the pure parts."""
