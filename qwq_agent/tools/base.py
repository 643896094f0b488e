"""Typed tools from Python functions: `@tool`, `FunctionTool`, and return-value conversion.

The JSON Schema of a tool's arguments comes from the function's type hints (through pydantic), its
description and per-argument descriptions from the docstring. A first parameter annotated `ToolContext`
is injected by the loop and never shown to the model.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, ClassVar, Generic, TypeVar, get_args, get_origin, get_type_hints, overload

import docstring_parser
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from qwq_agent.agent.messages import ToolSpec
from qwq_agent.protocols import ToolContext, ToolOutput
from qwq_agent.tools.result_bound import bound_value, cut_note
from qwq_agent.tools.tool_threads import convert_in_thread, run_in_thread

__all__ = [
    "FunctionTool",
    "ToolArgumentsError",
    "UnserialisableResult",
    "drop_documented_defaults",
    "is_json_value",
    "parse_docstring",
    "same_json_value",
    "to_tool_output",
    "tool",
    "tool_from_model",
    "validate_arguments",
]


ArgsT = TypeVar("ArgsT", bound=BaseModel)


class ToolArgumentsError(ValueError):
    """Arguments that passed the JSON Schema but not pydantic's validation (or a direct call's)."""


class UnserialisableResult(TypeError):
    """A tool returned a value that could not be turned into JSON; `__cause__` says why."""


def to_tool_output(value: Any) -> ToolOutput:
    """A `ToolOutput` passes through, a str becomes its text, anything else is JSON-serialised: as much
    of it as an output can show (`result_bound.bound_value`), with a last line saying where it was cut."""
    if isinstance(value, ToolOutput):
        return value
    if isinstance(value, str):
        return ToolOutput(text=value)
    # Iterators pulled in Python and the value cut to what an output can show (result_bound.py), then
    # to_jsonable_python handles models, dataclasses, datetimes, sets...; str() covers the rest.
    value, cut_at = bound_value(value)
    text = json.dumps(to_jsonable_python(value, fallback=str), ensure_ascii=False)
    if cut_at is None:
        return ToolOutput(text=text)
    return ToolOutput(text=f"{text}\n{cut_note(cut_at)}", metadata={"items_cut_at": cut_at})


def _converted(value: Any) -> Any:
    """`to_tool_output(value)`, or an awaitable passed through (a sync function returning a coroutine);
    a failure raised as `UnserialisableResult`."""
    if inspect.isawaitable(value):
        return value
    try:
        return to_tool_output(value)
    except Exception as exc:
        raise UnserialisableResult(
            f"its return value could not be serialised ({type(exc).__name__})"
        ) from exc


def _call_and_convert(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    # `func` positional-only: a tool's own parameter may be called `func` (it goes on in `kwargs`).
    # In the tool's thread: a large return value (a list of 10**7 items) is turned into JSON there,
    # not on the event loop, where every other task waited for it.
    return _converted(func(*args, **kwargs))


async def _output(result: Any) -> ToolOutput:
    """`result` (what a tool's function returned, or its awaited coroutine's) as a `ToolOutput`; a value
    other than text is serialised in a thread, off the event loop: not the sync tools' (where it waited
    behind their calls), the results' own (`convert_in_thread`)."""
    while inspect.isawaitable(result):
        result = await result
    if isinstance(result, ToolOutput | str):
        return to_tool_output(result)
    converted: ToolOutput = await convert_in_thread(_converted, result)
    return converted


def same_json_value(a: Any, b: Any) -> bool:
    """Equal as JSON values: `1 == 1.0`, but `True` is not `1` and `None` is only `None`."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json_value(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def drop_documented_defaults(model: type[BaseModel], arguments: dict[str, Any]) -> dict[str, Any]:
    """`arguments` without the values equal to their field's documented default.

    `x: str = None` documents null as the default, but pydantic would reject an explicit null as not a
    string; leaving the argument out gives the function exactly that default.
    """
    if not isinstance(arguments, dict):
        return arguments
    out = dict(arguments)
    for name, field in model.model_fields.items():
        if field.is_required() or field.default_factory is not None:
            continue
        for key in {name, field.alias or name}:
            if key in out:
                try:
                    default = to_jsonable_python(field.default)
                except Exception:  # a default with no JSON form cannot be what the model wrote
                    continue
                if same_json_value(out[key], default):
                    del out[key]
    return out


# -- docstrings ------------------------------------------------------------------------------------


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a Google, NumPy or Sphinx (reST) docstring into (description, {argument: description}).

    The description is the text before the first section (`Args:`, `:param x:`, ...). Parsing is
    `docstring_parser`'s, with the style detected per docstring.
    """
    if not doc:
        return "", {}
    parsed = docstring_parser.parse(inspect.cleandoc(doc), docstring_parser.DocstringStyle.AUTO)
    description = "\n\n".join(p for p in (parsed.short_description, parsed.long_description) if p)
    args = {}
    for param in parsed.params:
        name = param.arg_name.lstrip("*").split(" ")[-1]  # "*names", or "int x" from ":param int x:"
        args[name] = " ".join((param.description or "").split())
    return description.strip(), args


def validate_arguments(model: type[ArgsT], arguments: Any) -> ArgsT:
    """`arguments` (a model's JSON arguments, decoded) validated by `model`; raises `ValidationError`.

    JSON values are validated as the JSON they are, so a strict field takes the JSON form its schema
    describes (a date as a string, an Enum's value, an array for a tuple): in Python mode strict wants a
    `date`, a member, a `tuple`, which no JSON can hold. Anything else (a direct call's Python objects:
    a tuple, an int dict key, an IntEnum; a lone surrogate) is validated as the Python value it is:
    through a JSON text it would arrive changed (`{0: 5}` as `{"0": 5}`) or be refused.
    """
    arguments = drop_documented_defaults(model, arguments)
    if not is_json_value(arguments):
        return model.model_validate(arguments)
    try:
        text = json.dumps(arguments, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):  # UnicodeEncodeError (a lone surrogate) is a ValueError
        return model.model_validate(arguments)
    return model.model_validate_json(text)


def is_json_value(value: Any) -> bool:
    """Whether `value` is exactly what decoding JSON gives: dicts with str keys, lists, str, int, finite
    float, bool and None, all the way down (exact types: an IntEnum or a str subclass is not)."""
    stack = [value]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict or kind is list:
            if id(item) in seen:  # a cycle (or a shared part): no JSON decoding gives that
                return False
            seen.add(id(item))
        if kind is dict:
            if any(type(key) is not str for key in item):
                return False
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif kind is float:
            if not math.isfinite(item):  # NaN has a JSON text only by Python's leave
                return False
        elif kind not in (str, int, bool) and item is not None:
            return False
    return True


def describe_validation_error(exc: ValidationError) -> str:
    """`field.path: message` for each error, `; `-joined: short enough for an observation (and without
    pydantic's documentation URLs, which say nothing to the model)."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors())


def _annotated_description(annotation: Any) -> str | None:
    """The description given in `Annotated[T, Field(description=...)]`, if any."""
    if get_origin(annotation) is not Annotated:
        return None
    for meta in get_args(annotation)[1:]:
        if isinstance(meta, FieldInfo) and meta.description:
            return meta.description
    return None


# -- schema ----------------------------------------------------------------------------------------


def _strip_titles(schema: Any) -> Any:
    """Drop pydantic's auto-generated `title`s: noise in the prompt. Property *names* are kept."""
    if isinstance(schema, dict):
        out = {}
        for key, value in schema.items():
            if key == "title" and isinstance(value, str):
                continue
            if key in ("properties", "$defs", "patternProperties") and isinstance(value, dict):
                out[key] = {k: _strip_titles(v) for k, v in value.items()}
            else:
                out[key] = _strip_titles(value)
        return out
    if isinstance(schema, list):
        return [_strip_titles(v) for v in schema]
    return schema


def _model_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = _strip_titles(model.model_json_schema())
    ref, defs = schema.get("$ref"), schema.get("$defs")
    if isinstance(ref, str) and ref.startswith("#/$defs/") and isinstance(defs, dict) and ref[8:] in defs:
        # A recursive model is written as a reference to its own definition: the arguments must be its
        # fields here, or `additionalProperties` below would refuse them all. The definition stays, for
        # the references inside it.
        del schema["$ref"]
        schema = {**defs[ref[8:]], **schema}
    schema.setdefault("properties", {})
    # pydantic drops unknown keys of nested models by default; the model should hear about them.
    for sub in schema.get("$defs", {}).values():
        if sub.get("type") == "object" and "properties" in sub:
            sub.setdefault("additionalProperties", False)
    return schema


def _reserved_name_reason(name: str) -> str | None:
    """Why pydantic cannot hold a parameter called `name` as a field of the arguments model, or None."""
    if name.startswith("_"):
        return "pydantic keeps names with a leading underscore for private attributes"
    if name == "model_config":
        return "pydantic takes it for the model's configuration, and it would vanish from the schema"
    if name.startswith(("model_dump", "model_validate")) and hasattr(BaseModel, name):
        return "it is a method of pydantic's BaseModel"
    return None


def _parameter_field(param: inspect.Parameter, description: str | None) -> FieldInfo:
    """The field of a parameter; `description` (the docstring's) unless the field has its own."""
    if isinstance(param.default, FieldInfo):
        # `limit: int = Field(10, ge=1)`: pydantic's idiom for function parameters (as in
        # `validate_call`), the default is the field itself, bounds and description included.
        if description and param.default.description is None:
            return FieldInfo.merge_field_infos(param.default, description=description)
        return param.default
    default = ... if param.default is inspect.Parameter.empty else param.default
    return Field(default, description=description) if description else Field(default)


def _is_context(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, ToolContext)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel) and not _is_context(annotation)


class FunctionTool:
    """A tool backed by a Python function (sync or async); satisfies the `Tool` protocol.

    Arguments are validated by pydantic against the function's signature (extra arguments are
    rejected) before the call. Sync functions run in a worker thread so they do not block the loop.
    `timeout` (seconds) is a per-tool default that `ToolRegistry` honours. `uses_sandbox` declares
    that the tool works on the run's sandbox, so its calls keep the order the model wrote them in.
    """

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
        uses_sandbox: bool = False,
    ) -> None:
        self.func = func
        self.timeout = timeout
        self.uses_sandbox = uses_sandbox
        doc_description, arg_docs = parse_docstring(inspect.getdoc(func))
        hints = get_type_hints(func, include_extras=True)
        params = list(inspect.signature(func).parameters.values())

        self._takes_context = bool(params) and _is_context(hints.get(params[0].name))
        if self._takes_context:
            params = params[1:]
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
                raise TypeError(f"tool {func.__name__!r}: parameter {p.name!r} must be a named parameter")
        self._param_names: list[str] = []

        # One pydantic-model parameter: its fields are the arguments (not nested under its name).
        self._model_param: str | None = None
        if len(params) == 1 and _is_model(hints.get(params[0].name)):
            self._model_param = params[0].name
            model: type[BaseModel] = hints[params[0].name]
            model_doc, model_arg_docs = parse_docstring(model.__doc__)
            doc_description = doc_description or model_doc
            arg_docs = {**model_arg_docs, **arg_docs}
        else:
            fields: dict[str, Any] = {}
            for p in params:
                reason = _reserved_name_reason(p.name)
                if reason:
                    raise TypeError(
                        f"tool {func.__name__!r}: parameter {p.name!r} cannot be an argument ({reason}); "
                        "rename it"
                    )
                annotation = hints.get(p.name, Any)
                # A description in `Annotated[..., Field(description=...)]` wins over the docstring's.
                doc = None if _annotated_description(annotation) else arg_docs.get(p.name)
                fields[p.name] = (annotation, _parameter_field(p, doc))
            self._param_names = list(fields)
            model = create_model(
                f"{func.__name__}_arguments", __config__=ConfigDict(extra="forbid"), **fields
            )
        self.arguments_model = model

        schema = _model_schema(model)
        if self._model_param is not None:
            for prop, prop_schema in schema["properties"].items():
                if prop in arg_docs and "description" not in prop_schema:
                    prop_schema["description"] = arg_docs[prop]
            # Arguments the model does not know are an error to report, not to drop silently.
            if model.model_config.get("extra") != "allow":
                schema.setdefault("additionalProperties", False)
        schema.pop("description", None)  # the model's docstring is the tool description, not repeated
        self._spec = ToolSpec(
            name=name or func.__name__,
            description=description if description is not None else doc_description,
            parameters=schema,
        )

    @property
    def spec(self) -> ToolSpec:
        """What the model is told about this tool."""
        return self._spec

    @classmethod
    def from_model(
        cls,
        model: type[BaseModel],
        func: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
        uses_sandbox: bool = False,
    ) -> FunctionTool:
        """A tool whose arguments are the fields of `model`; `func` receives a `model` instance.

        `func` may take a `ToolContext` first: `func(context, args)` or just `func(args)`.
        """
        takes_context = len(inspect.signature(func).parameters) >= 2

        async def call(*args: Any) -> Any:
            if inspect.iscoroutinefunction(func):
                return await func(*args)
            return await run_in_thread(_call_and_convert, func, *args)

        # A wrapper with the right annotations lets __init__ treat it like a decorated function.
        async def with_context(context: ToolContext, args: BaseModel) -> Any:
            return await call(context, args)

        async def args_only(args: BaseModel) -> Any:
            return await call(args)

        wrapper: Callable[..., Awaitable[Any]] = with_context if takes_context else args_only

        wrapper.__annotations__ = {
            **({"context": ToolContext} if takes_context else {}),
            "args": model,
            "return": Any,
        }
        wrapper.__name__ = getattr(func, "__name__", model.__name__)
        wrapper.__doc__ = func.__doc__ or model.__doc__
        return cls(wrapper, name=name, description=description, timeout=timeout, uses_sandbox=uses_sandbox)

    def bind(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Validate `arguments` with pydantic and return the keyword arguments for the function."""
        try:
            validated = validate_arguments(self.arguments_model, arguments)
        except ValidationError as exc:
            raise ToolArgumentsError(describe_validation_error(exc)) from None
        if self._model_param is not None:
            return {self._model_param: validated}
        # The instance's own values (not model_dump), so nested models stay model instances; not
        # getattr, where BaseModel's properties (`model_extra`, `model_fields_set`) win over a field.
        values = validated.__dict__
        return {name: values[name] for name in self._param_names}

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        """Validate the arguments, call the function and convert what it returns."""
        kwargs = self.bind(arguments)
        args = (context,) if self._takes_context else ()
        if inspect.iscoroutinefunction(self.func):
            return await _output(await self.func(*args, **kwargs))
        # On the tools' own threads (tool_threads.py), converted there too; a sync function may return
        # a coroutine, awaited here.
        return await _output(await run_in_thread(_call_and_convert, self.func, *args, **kwargs))

    def __repr__(self) -> str:
        return f"FunctionTool(name={self._spec.name!r})"


@overload
def tool(func: Callable[..., Any], /) -> FunctionTool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    uses_sandbox: bool = False,
) -> Callable[[Callable[..., Any]], FunctionTool]: ...


def tool(
    func: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    uses_sandbox: bool = False,
) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """Make a `FunctionTool` from a function: `@tool` or `@tool(name=..., timeout=..., uses_sandbox=...)`."""
    if func is not None:
        return FunctionTool(func)

    def decorate(f: Callable[..., Any]) -> FunctionTool:
        return FunctionTool(f, name=name, description=description, timeout=timeout, uses_sandbox=uses_sandbox)

    return decorate


def tool_from_model(
    model: type[BaseModel], func: Callable[..., Any | Awaitable[Any]], **kwargs: Any
) -> FunctionTool:
    """Same as `FunctionTool.from_model`."""
    return FunctionTool.from_model(model, func, **kwargs)


class ModelTool(Generic[ArgsT]):
    """Base of a configured tool (it holds settings: a database, a policy) whose arguments are one model.

    Subclasses (`class FetchUrl(ModelTool[FetchUrlArgs])`) set `name`, `description` and `Args` (and
    `uses_sandbox = True` when `run` works on the run's sandbox) and implement `run(args, context)`, where
    `args` is an `Args` instance. Arguments are validated again with pydantic here, since callers may bypass
    the registry's schema check; a failure becomes an error observation, not an exception.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    # Set on the class; not a ClassVar only because a ClassVar cannot hold a type variable.
    Args: type[ArgsT]
    uses_sandbox: ClassVar[bool] = False
    _specs: ClassVar[dict[type, ToolSpec]] = {}

    @property
    def spec(self) -> ToolSpec:
        """What the model is told; built once per class (the loop asks for it every step)."""
        cls = type(self)
        if cls not in ModelTool._specs:
            ModelTool._specs[cls] = ToolSpec(
                name=self.name, description=self.description, parameters=self.Args.model_json_schema()
            )
        return ModelTool._specs[cls]

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        try:
            args = validate_arguments(self.Args, arguments)
        except ValidationError as exc:
            return ToolOutput(
                text=f"{self.name}: invalid arguments: {describe_validation_error(exc)}", is_error=True
            )
        return await self.run(args, context)

    async def run(self, args: ArgsT, context: ToolContext) -> ToolOutput:
        raise NotImplementedError
