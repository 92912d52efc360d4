"""The torch side's rulers: live tensor bytes (``memcount``) and the device-memory twin (``twin``)
that every ``ftmix train`` run carries. The estimate and plan packages never import this."""
