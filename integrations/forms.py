"""Forms of the integrations admin.

The integration form is built from the connector type's declared parameters (``Param``): one
field per parameter, secrets as password inputs that are never filled in. Values are checked by
the services on save (``integration_create``/``integration_update``, ``definition_save``,
``mapping_save``), whose errors the admin puts back on these fields.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from django import forms
from django.utils.html import format_html

from integrations import entities as ent
from integrations import transforms
from integrations.connectors.base import Connector, Param
from integrations.models import Crosswalk, Integration, SyncDefinition

#: Form fields of connector parameters are named ``param_<name>``: a parameter may share a name
#: with a model field (``name``, ``url``...).
PARAM_PREFIX = "param_"


def param_field_name(name: str) -> str:
    return PARAM_PREFIX + name


class PrettyJSONField(forms.JSONField):
    """A JSON textarea shown indented, one key per line, so people can edit it."""

    def prepare_value(self, value):
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        return json.dumps(value, ensure_ascii=False, indent=2, cls=self.encoder)


class StoredSecretInput(forms.PasswordInput):
    """A password input that is never filled in, with a "stored" mark when a value is kept."""

    def __init__(self, *, stored: bool, attrs=None) -> None:
        super().__init__(attrs=attrs, render_value=False)
        self.stored = stored

    def render(self, name, value, attrs=None, renderer=None):
        html = super().render(name, None, attrs, renderer)
        if not self.stored:
            return html
        return format_html(
            '{} <span class="integration-stored" title="A value is stored (encrypted); it is '
            'never shown. Leave the box empty to keep it.">stored</span>',
            html,
        )


def param_field(param: Param, *, stored: bool = False) -> forms.Field:
    """The form field for one declared parameter. A stored secret may be left empty."""
    has_default = param.default not in (None, "")
    required = param.required and not has_default and not stored
    help_text = param.help
    common: dict[str, Any] = {"label": param.label, "required": required, "help_text": help_text}
    if param.kind == "secret":
        if stored:
            common["help_text"] = (help_text + " " if help_text else "") + (
                "Leave empty to keep the stored value; type a new one to replace it."
            )
        return forms.CharField(
            widget=StoredSecretInput(stored=stored, attrs={"autocomplete": "new-password"}),
            strip=False,
            **common,
        )
    if param.kind == "int":
        return forms.IntegerField(**common)
    if param.kind == "bool":
        return forms.BooleanField(**{**common, "required": False})
    if param.kind == "choice":
        choices = list(param.choices)
        if not required:
            choices = [("", "---------"), *choices]
        return forms.ChoiceField(choices=choices, **common)
    if param.kind == "url":
        # A CharField, not a URLField: the service checks the address with the outbound
        # guard (scheme, private ranges) and says why, on this field.
        return forms.CharField(
            widget=forms.URLInput(attrs={"class": "vURLField integration-wide"}), **common
        )
    if param.kind == "pem":
        return forms.CharField(
            widget=forms.Textarea(
                attrs={
                    "class": "vLargeTextField integration-json",
                    "rows": 6,
                    "spellcheck": "false",
                }
            ),
            **common,
        )
    return forms.CharField(
        widget=forms.TextInput(attrs={"class": "vTextField integration-wide"}), **common
    )


class IntegrationForm(forms.ModelForm):
    """An integration's own fields; :func:`integration_form` adds the type's parameters."""

    connector_cls: ClassVar[type[Connector] | None] = None
    stored_secrets: ClassVar[frozenset[str]] = frozenset()

    class Meta:
        model = Integration
        fields = ["name", "source_system", "is_active"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.connector_cls is None:
            return
        saved = self.instance.params if self.instance.pk else {}
        for param in self.connector_cls.params:
            name = param_field_name(param.name)
            if name not in self.fields or param.kind == "secret":
                continue  # secrets are never put back into the page
            value = saved.get(param.name, param.default)
            if value is not None:
                self.initial.setdefault(name, value)

    def param_values(self) -> dict[str, Any]:
        """The parameters as the services take them (empty secret: keep the stored one)."""
        values = {}
        for param in self.connector_cls.params:
            value = self.cleaned_data.get(param_field_name(param.name))
            if param.kind == "secret" and value in (None, "") and param.name in self.stored_secrets:
                continue
            values[param.name] = "" if value is None else value
        return values


def integration_form(
    connector_cls: type[Connector], *, stored_secrets: frozenset[str] = frozenset()
) -> type[IntegrationForm]:
    """An integration form class with a field per parameter of ``connector_cls``."""
    attrs: dict[str, Any] = {
        "connector_cls": connector_cls,
        "stored_secrets": stored_secrets,
        "__module__": __name__,
    }
    for param in connector_cls.params:
        attrs[param_field_name(param.name)] = param_field(
            param, stored=param.name in stored_secrets
        )
    return type(f"{connector_cls.__name__}Form", (IntegrationForm,), attrs)


class SyncDefinitionForm(forms.ModelForm):
    """A sync definition of one integration: the entities are those its connector reads."""

    integration: ClassVar[Integration | None] = None

    entities = forms.MultipleChoiceField(
        widget=forms.CheckboxSelectMultiple,
        choices=[],
        help_text="Synced in this order: referenced entities first.",
    )

    class Meta:
        model = SyncDefinition
        fields = [
            "name",
            "entities",
            "mode",
            "direction",
            "conflict_policy",
            "schedule_kind",
            "interval_minutes",
            "crontab",
            "hold_removal_pct",
            "hold_change_pct",
            "hold_min_rows",
            "is_active",
        ]
        widgets = {
            "mode": forms.RadioSelect,
            "schedule_kind": forms.RadioSelect,
            "crontab": forms.TextInput(attrs={"placeholder": "30 2 * * *", "class": "vTextField"}),
        }
        help_texts = {
            "interval_minutes": "For 'Every N minutes'.",
        }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.integration_id is None and self.integration is not None:
            self.instance.integration = self.integration
        from integrations.selectors import connector_entities

        readable = (
            connector_entities(self.instance.integration) if self.instance.integration_id else ()
        )
        if "entities" in self.fields:
            self.fields["entities"].choices = [
                (name, ent.BY_NAME[name].label)
                for name in ent.in_merge_order(readable)
                if name in ent.BY_NAME
            ]
            if not self.instance.pk:
                self.initial.setdefault("entities", list(readable))


def definition_form(integration: Integration) -> type[SyncDefinitionForm]:
    return type(
        "SyncDefinitionForm",
        (SyncDefinitionForm,),
        {"integration": integration, "__module__": __name__},
    )


class RunNowForm(forms.Form):
    """Start a run now; a OneRoster CSV integration fed by upload needs the zip."""

    upload = forms.FileField(
        label="OneRoster zip",
        required=False,
        help_text="The OneRoster 1.2 CSV zip (with manifest.csv) to sync.",
        widget=forms.ClearableFileInput(attrs={"accept": ".zip,application/zip"}),
    )

    def __init__(self, *args, needs_upload: bool, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if needs_upload:
            self.fields["upload"].required = True
        else:
            del self.fields["upload"]


class MappingForm(forms.Form):
    """The rules of one entity's mapping as JSON, a note for the version, and sample rows."""

    rules = forms.CharField(
        widget=forms.Textarea(
            attrs={"rows": 28, "class": "integration-json", "spellcheck": "false"}
        ),
        help_text='A list of rules: {"target": hub field, "source": source field (or a list), '
        '"transforms": [{"op": ...}, ...]}. Ops: trim, case, parse_date, crosswalk, default, '
        "constant, concatenate, split, regex_extract, replace.",
    )
    note = forms.CharField(
        required=False,
        max_length=300,
        help_text="Why this version (kept in the history).",
        widget=forms.TextInput(attrs={"class": "vTextField"}),
    )
    sample = forms.CharField(
        label="Sample rows (CSV)",
        required=False,
        widget=forms.Textarea(attrs={"rows": 6, "class": "integration-csv", "spellcheck": "false"}),
        help_text="A header with the source's field names, then a few rows. Preview runs the "
        "rules above (saved or not) over them.",
    )

    def clean_rules(self) -> list[dict]:
        text = self.cleaned_data["rules"]
        try:
            rules = json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(
                f"Not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."
            ) from exc
        if not isinstance(rules, list):
            raise forms.ValidationError(
                f"The rules must be a JSON list, not {type(rules).__name__}."
            )
        return rules


class CrosswalkForm(forms.ModelForm):
    values = PrettyJSONField(
        widget=forms.Textarea(
            attrs={"rows": 16, "class": "integration-json", "spellcheck": "false"}
        ),
        help_text='Source value to hub value, e.g. {"1": "HI7", "2": "AM7"}. A mapping uses it '
        'with {"op": "crosswalk", "table": "<name>"}.',
    )

    class Meta:
        model = Crosswalk
        fields = ["district", "name", "description", "values"]

    def clean_values(self) -> dict:
        values = self.cleaned_data["values"]
        # The same check a mapping's inline crosswalk gets, so a table saved here compiles.
        problem = transforms._crosswalk_problem(values)
        if problem:
            raise forms.ValidationError(f"The values {problem}.")
        return values
