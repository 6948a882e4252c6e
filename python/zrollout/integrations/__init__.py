"""Adapters that let RL frameworks drive zrollout through the interfaces they already call.

The frameworks are not dependencies: each adapter is duck-typed to the framework's published
interface (named in its docstring) and returns plain Python / numpy values in the shapes the
framework expects; where the framework is importable, its own result classes are used.

- :class:`zrollout.integrations.tunix.ZrolloutRollout`: Tunix ``BaseRollout``.
- :class:`zrollout.integrations.skyrl.ZrolloutInferenceEngine`: SkyRL ``InferenceEngineInterface``
  (and :func:`zrollout.integrations.skyrl.group_outputs_by_prompt`).
- :class:`zrollout.integrations.verl.ZrolloutAsyncServer`: verl's async rollout server
  (``generate(prompt_ids, sampling_params, request_id)``); ``python3 -m zrollout.main_generation``
  is verl's ``main_generation``.
- :class:`zrollout.integrations.rlinf.RLinfRollout`: RLinf's rollout worker config and calls.
"""
