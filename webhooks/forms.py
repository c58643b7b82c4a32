"""Forms of the webhooks admin. They validate with the services' own checks, so a bad value is a
field error on the form, never a failed save."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib.admin import widgets
from django.core.exceptions import ValidationError
from django.db import models

from webhooks import catalogue, selectors, services
from webhooks.models import WebhookEndpoint


def event_type_choices() -> list[tuple[str, list[tuple[str, str]]]]:
    return [
        (group, [(entry.type, entry.type) for entry in entries])
        for group, entries in selectors.webhook_event_type_groups()
    ]


_VERB_ORDER = {"created": 0, "updated": 1, "status_changed": 2, "deleted": 3}


class EventTypesWidget(forms.CheckboxSelectMultiple):
    """A grid per group: a row per kind of record, a checkbox per thing that happens to it
    (``student`` · created, updated, deleted). Each box's title is the type's description."""

    template_name = "webhooks/widgets/event_types.html"

    def create_option(self, name, value, label, selected, index, subindex=None, attrs=None):
        option = super().create_option(name, value, label, selected, index, subindex, attrs)
        entry = catalogue.entries().get(value)
        option["description"] = f"{value}: {entry.description}" if entry else value
        option["entity"], _, option["verb"] = str(value).partition(".")
        return option

    def get_context(self, name, value, attrs):
        context = super().get_context(name, value, attrs)
        grid = []
        for group, options, _index in context["widget"]["optgroups"]:
            rows: dict[str, list[dict]] = {}
            for option in sorted(options, key=lambda o: _VERB_ORDER.get(o["verb"], 9)):
                rows.setdefault(option["entity"], []).append(option)
            grid.append((group, sorted(rows.items())))
        context["widget"]["grid"] = grid
        return context


def _formfield(db_field, **kwargs):
    if isinstance(db_field, models.URLField):
        kwargs.setdefault("assume_scheme", "https")  # Django 6's default, chosen now
    return db_field.formfield(**kwargs)


class WebhookEndpointForm(forms.ModelForm):
    event_types = forms.MultipleChoiceField(
        choices=event_type_choices,
        widget=EventTypesWidget,
    )

    class Meta:
        model = WebhookEndpoint
        formfield_callback = _formfield
        fields = [
            "district",
            "name",
            "url",
            "method",
            "body_format",
            "event_types",
            "schools",
            "payload_style",
            "retry_schedule",
            "max_in_flight",
            "rate_per_second",
            "ordered",
            "owner_email",
            "active",
        ]
        widgets = {
            "url": forms.URLInput(attrs={"class": "vURLField"}),
            "payload_style": forms.RadioSelect,
            "retry_schedule": forms.TextInput(attrs={"class": "vTextField webhook-wide"}),
        }
        labels = {"url": "URL"}
        help_texts = {
            "url": "Where events are sent; without a scheme, https is assumed. Only public "
            "addresses are accepted: private, loopback and cloud-metadata addresses are refused.",
            "retry_schedule": "Seconds before each retry, comma-separated. The default is "
            "Standard Webhooks' schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, "
            "24 h (10 attempts over about 3 days).",
        }

    def clean(self):
        cleaned = super().clean()
        if "event_types" in self.fields and cleaned.get("event_types"):
            try:
                services.validate_event_types(cleaned["event_types"], client=self.instance.client)
            except ValidationError as exc:
                self.add_error(None, exc)
        schools = cleaned.get("schools")
        if "district" in self.fields:
            district = cleaned.get("district")
            district_id = district.pk if district is not None else None
        else:
            district_id = self.instance.district_id
        if district_id is not None and any(s.district_id != district_id for s in schools or ()):
            self.add_error("schools", "Choose schools of the endpoint's district.")
        return cleaned


class RotateSecretForm(forms.Form):
    grace_hours = forms.IntegerField(
        label="Grace period (hours)",
        min_value=0,
        max_value=24 * 30,
        help_text="The current secret keeps signing, beside the new one, for this long, so the "
        "receiver can switch without losing a request. 0 ends it at once.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["grace_hours"].initial = settings.WEBHOOKS["SECRET_GRACE_HOURS"]


class RecoverForm(forms.Form):
    since = forms.SplitDateTimeField(
        label="Failed since",
        widget=widgets.AdminSplitDateTime,
        help_text="Every delivery that failed for good at or after this time is queued again, "
        "from its first attempt, with the same webhook-id.",
    )
    endpoint = forms.ModelChoiceField(
        queryset=WebhookEndpoint.objects.none(),
        required=False,
        empty_label="Every endpoint",
        help_text="Only this endpoint's deliveries.",
    )

    def __init__(self, *args, endpoints, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["endpoint"].queryset = endpoints


class EventReplayForm(forms.Form):
    endpoint = forms.ModelChoiceField(
        queryset=WebhookEndpoint.objects.none(),
        help_text="The event goes to this endpoint again (or for the first time, if it may "
        "receive it now), with the same webhook-id.",
    )

    def __init__(self, *args, endpoints, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["endpoint"].queryset = endpoints
