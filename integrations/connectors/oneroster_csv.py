"""OneRoster 1.2 CSV bulk and delta files: a zip uploaded, dropped in a folder, or fetched.

The zip's ``manifest.csv`` (``propertyName,value``) says which files it holds and how:
``file.users`` = ``bulk`` (the whole set: rows missing from it are removals), ``delta`` (only
changed rows; ``status=tobedeleted`` removes) or ``absent``. Everything is checked before a
single row is read: the manifest's versions, each listed file present, each file's encoding.
The pipeline then loads each file with PostgreSQL COPY.

A zip fetched from an HTTPS URL goes through the SSRF-guarded outbound client, with the
server's certificate verified against the public CAs. A district whose server has a
certificate from its own (private) CA pastes that CA's certificate in ``url_ca_certificate``:
it is trusted in addition, for this integration only. Verification is never switched off.
"""

from __future__ import annotations

import codecs
import csv
import io
import shutil
import ssl
import tempfile
import zipfile
from pathlib import Path

from django.conf import settings

from integrations.connectors.base import (
    Connector,
    ConnectorError,
    CsvFile,
    EntityRead,
    Join,
    Param,
    ReadMode,
    Window,
)
from integrations.connectors.registry import register

#: The OneRoster 1.2 CSV columns of each file (the spec's order).
COLUMNS: dict[str, list[str]] = {
    "orgs": [
        "sourcedId",
        "status",
        "dateLastModified",
        "name",
        "type",
        "identifier",
        "parentSourcedId",
    ],
    "academicSessions": [
        "sourcedId",
        "status",
        "dateLastModified",
        "title",
        "type",
        "startDate",
        "endDate",
        "parentSourcedId",
        "schoolYear",
    ],
    "users": [
        "sourcedId",
        "status",
        "dateLastModified",
        "enabledUser",
        "username",
        "userIds",
        "givenName",
        "familyName",
        "middleName",
        "identifier",
        "email",
        "sms",
        "phone",
        "agentSourcedIds",
        "grades",
        "password",
        "userMasterIdentifier",
        "resourceSourcedIds",
        "preferredGivenName",
        "preferredMiddleName",
        "preferredFamilyName",
        "primaryOrgSourcedId",
        "pronouns",
    ],
    "roles": [
        "sourcedId",
        "status",
        "dateLastModified",
        "userSourcedId",
        "roleType",
        "role",
        "beginDate",
        "endDate",
        "orgSourcedId",
        "userProfileSourcedId",
    ],
    "courses": [
        "sourcedId",
        "status",
        "dateLastModified",
        "schoolYearSourcedId",
        "title",
        "courseCode",
        "grades",
        "orgSourcedId",
        "subjects",
        "subjectCodes",
    ],
    "classes": [
        "sourcedId",
        "status",
        "dateLastModified",
        "title",
        "grades",
        "courseSourcedId",
        "classCode",
        "classType",
        "location",
        "schoolSourcedId",
        "termSourcedIds",
        "subjects",
        "subjectCodes",
        "periods",
    ],
    "enrollments": [
        "sourcedId",
        "status",
        "dateLastModified",
        "classSourcedId",
        "schoolSourcedId",
        "userSourcedId",
        "role",
        "primary",
        "beginDate",
        "endDate",
    ],
    "demographics": [
        "sourcedId",
        "status",
        "dateLastModified",
        "birthDate",
        "sex",
        "americanIndianOrAlaskaNative",
        "asian",
        "blackOrAfricanAmerican",
        "nativeHawaiianOrOtherPacificIslander",
        "white",
        "demographicRaceTwoOrMoreRaces",
        "hispanicOrLatinoEthnicity",
        "countryOfBirthCode",
        "stateOfBirthAbbreviation",
        "cityOfBirth",
        "publicSchoolResidenceStatus",
    ],
}

#: hub entity -> (file, where, explode)
FILES: dict[str, tuple[str, dict[str, list[str]], str | None]] = {
    "school": ("orgs", {"type": ["school"]}, None),
    "academic_session": ("academicSessions", {}, None),
    "staff": ("users", {"role": ["teacher", "administrator", "aide", "proctor"]}, None),
    "student": ("users", {"role": ["student"]}, None),
    "guardian": ("users", {"role": ["parent", "guardian", "relative"]}, None),
    "student_guardian": ("users", {"role": ["parent", "guardian", "relative"]}, "agentSourcedIds"),
    "enrollment": ("users", {"role": ["student"]}, "orgSourcedIds"),
    "student_demographic": ("demographics", {}, None),
    "section": ("classes", {}, None),
    "section_enrollment": ("enrollments", {"role": ["student"]}, None),
}

# OneRoster has seven race and ethnicity flags where the hub keeps one federal code.
RACE_SQL = """CASE
  WHEN lower(r."hispanicOrLatinoEthnicity") = 'true' THEN 'HI7'
  WHEN lower(coalesce(r."demographicRaceTwoOrMoreRaces", '')) = 'true'
    OR (lower(coalesce(r."americanIndianOrAlaskaNative", '')) = 'true')::int
     + (lower(coalesce(r."asian", '')) = 'true')::int
     + (lower(coalesce(r."blackOrAfricanAmerican", '')) = 'true')::int
     + (lower(coalesce(r."nativeHawaiianOrOtherPacificIslander", '')) = 'true')::int
     + (lower(coalesce(r."white", '')) = 'true')::int > 1 THEN 'MU7'
  WHEN lower(r."americanIndianOrAlaskaNative") = 'true' THEN 'AM7'
  WHEN lower(r."asian") = 'true' THEN 'AS7'
  WHEN lower(r."blackOrAfricanAmerican") = 'true' THEN 'BL7'
  WHEN lower(r."nativeHawaiianOrOtherPacificIslander") = 'true' THEN 'PI7'
  WHEN lower(r."white") = 'true' THEN 'WH7'
END"""
ENCODINGS = (
    ("auto", "Detect (UTF-8 expected)"),
    ("utf-8", "UTF-8"),
    ("cp1252", "Windows-1252"),
    ("latin-1", "ISO-8859-1 (Latin-1)"),
)

SOURCES = (
    ("upload", "A zip uploaded with each run"),
    ("folder", "The newest zip in a watched folder"),
    ("url", "A zip fetched from an HTTPS URL"),
)


def default_mappings() -> dict:
    from integrations.connectors.oneroster_rest import ONEROSTER_DEFAULT_MAPPINGS

    return ONEROSTER_DEFAULT_MAPPINGS


class _Defaults:
    """Resolves the shared OneRoster default mappings on first use (no import cycle)."""

    def __get__(self, instance, owner) -> dict:
        return default_mappings()


@register
class OneRosterCsvConnector(Connector):
    """OneRoster 1.2 CSV: bulk and delta zips."""

    type_name = "oneroster_csv"
    label = "OneRoster 1.2 CSV (zip)"
    description = "A OneRoster 1.2 CSV zip with manifest.csv: uploaded, dropped or fetched."
    params = (
        Param("source", "Where the zip comes from", "choice", default="upload", choices=SOURCES),
        Param(
            "folder",
            "Watched folder",
            "path",
            required=False,
            help="For 'folder': the newest *.zip here is read; processed zips move to "
            "'processed/'. Relative paths are under the drop folder.",
        ),
        Param("url", "Zip URL", "url", required=False, help="For 'url'."),
        Param("url_token", "Bearer token for the URL", "secret", required=False),
        Param(
            "url_ca_certificate",
            "CA certificate for the URL (PEM)",
            "pem",
            required=False,
            help="Only when the URL's server has a certificate from your own CA: paste that "
            "CA's certificate (-----BEGIN CERTIFICATE----- ...). It is trusted besides the "
            "public CAs; the certificate is always verified.",
        ),
        Param("encoding", "File encoding", "choice", default="auto", choices=ENCODINGS),
    )
    entities = tuple(FILES)
    cursor_kind = None
    default_mappings = _Defaults()

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._upload: Path | None = None
        self._dir: Path | None = None
        self._manifest: dict[str, str] = {}
        self._files: dict[str, CsvFile] = {}
        self._picked: Path | None = None

    # -- where the zip comes from

    def use_upload(self, path: str | Path) -> None:
        self._upload = Path(path)

    def retry_only(self) -> None:
        """Read nothing new: every file an empty delta (its header only). For the admin's
        "Re-run failed records" with no zip: each entity's read is incomplete and carries no
        record, so the pipeline adds back the records that failed before, with the rows of
        roles.csv and demographics.csv they were read with, and nothing else changes (an
        empty delta removes nothing)."""
        target = self._workdir() / "retry-only.zip"
        manifest = [
            ["propertyName", "value"],
            ["manifest.version", "1.0"],
            ["oneroster.version", "1.2"],
            *([f"file.{name}", "delta"] for name in COLUMNS),
        ]
        with zipfile.ZipFile(target, "w") as zf:
            zf.writestr("manifest.csv", _csv_text(manifest))
            for name, header in COLUMNS.items():
                zf.writestr(f"{name}.csv", _csv_text([header]))
        self._upload = target

    def _folder(self) -> Path:
        folder = Path(self.params.get("folder") or "")
        if not folder.is_absolute():
            folder = Path(settings.INTEGRATIONS["DROP_FOLDER"]) / folder
        return folder

    def _zip_path(self) -> Path:
        source = self.params.get("source", "upload")
        if self._upload is not None:
            return self._upload
        if source == "upload":
            raise ConnectorError("no zip was uploaded with this run", kind="input")
        if source == "folder":
            folder = self._folder()
            if not folder.is_dir():
                raise ConnectorError(f"the watched folder {folder} does not exist", kind="input")
            zips = sorted(folder.glob("*.zip"), key=lambda p: p.stat().st_mtime)
            if not zips:
                raise ConnectorError(f"no zip waiting in {folder}", kind="input")
            self._picked = zips[-1]
            return self._picked
        if source == "url":
            return self._download()
        raise ConnectorError(f"unknown source {source!r}", kind="input")

    def _download(self) -> Path:
        from bxos.common.outbound import outbound_client

        url = self.params.get("url")
        if not url:
            raise ConnectorError("the 'url' source needs a Zip URL", kind="input")
        headers = {}
        if self.params.get("url_token"):
            headers["Authorization"] = f"Bearer {self.params['url_token']}"
        target = self._workdir() / "download.zip"
        verify = self._tls_context()
        try:
            with (
                outbound_client(timeout=300.0, verify=verify) as client,
                client.stream("GET", url, headers=headers) as response,
            ):
                if response.status_code in (401, 403):
                    raise ConnectorError(
                        f"credentials rejected: {url} answered {response.status_code}",
                        kind="credentials",
                    )
                if response.status_code != 200:
                    raise ConnectorError(
                        f"{url} answered {response.status_code}", kind="unavailable"
                    )
                with open(target, "wb") as fh:
                    for chunk in response.iter_bytes():
                        fh.write(chunk)
        except ConnectorError:
            raise
        except Exception as exc:  # network errors, refused addresses
            raise ConnectorError(f"cannot fetch {url}: {exc}", kind="unavailable") from exc
        return target

    def _tls_context(self) -> ssl.SSLContext | bool:
        """Certificate verification for the download: the public CAs, plus the integration's
        own CA when ``url_ca_certificate`` holds one."""
        pem = str(self.params.get("url_ca_certificate") or "").strip()
        if not pem:
            return True
        import certifi

        if "-----BEGIN CERTIFICATE-----" not in pem:
            raise ConnectorError(
                "url_ca_certificate is not a PEM certificate: it must start with "
                "-----BEGIN CERTIFICATE-----",
                kind="input",
            )
        context = ssl.create_default_context(cafile=certifi.where())
        try:
            context.load_verify_locations(cadata=pem)
        except (ssl.SSLError, ValueError) as exc:
            raise ConnectorError(
                f"url_ca_certificate could not be read as a certificate: {exc}", kind="input"
            ) from exc
        return context

    def _workdir(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="oneroster-"))
        return self._dir

    # -- the protocol

    def test(self) -> str:
        source = self.params.get("source", "upload")
        if source == "upload":
            return "Ready: upload a OneRoster zip when you start a run."
        path = self._zip_path()
        manifest = self._open(path)
        listed = [n for n, mode in manifest.items() if n.startswith("file.") and mode != "absent"]
        return (
            f"Read {path.name}: OneRoster {manifest.get('oneroster.version')}, {len(listed)} files"
        )

    def begin(self, *, mode: ReadMode, cursor: str | None) -> Window:
        self._open(self._zip_path())
        return Window(mode=mode, lower=None, upper=None, cursor_after=None)

    def _open(self, path: Path) -> dict[str, str]:
        if not zipfile.is_zipfile(path):
            raise ConnectorError(f"{path.name} is not a zip file", kind="input")
        target = self._workdir() / "zip"
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path) as archive:
            names = {Path(n).name: n for n in archive.namelist() if not n.endswith("/")}
            if "manifest.csv" not in names:
                raise ConnectorError(
                    f"{path.name} has no manifest.csv (OneRoster CSV zips must have one)",
                    kind="input",
                )
            for short, full in names.items():
                if short.endswith(".csv"):
                    with archive.open(full) as src, open(target / short, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        manifest = self._read_manifest(target / "manifest.csv")
        self._manifest = manifest
        for key, mode in manifest.items():
            if not key.startswith("file."):
                continue
            name = key.removeprefix("file.")
            if mode == "absent":
                continue
            csv_path = target / f"{name}.csv"
            if not csv_path.exists():
                raise ConnectorError(
                    f"manifest.csv lists {name}.csv as {mode}, but the zip does not contain it",
                    kind="input",
                )
            self._files[name] = CsvFile(
                name=f"{name}.csv", path=csv_path, encoding=self._encoding(csv_path)
            )
        return manifest

    def _read_manifest(self, path: Path) -> dict[str, str]:
        manifest: dict[str, str] = {}
        with open(path, encoding=self._encoding(path), newline="") as fh:
            reader = csv.reader(fh)
            header = [h.strip().lstrip("\ufeff") for h in next(reader, [])]
            if header[:2] != ["propertyName", "value"]:
                raise ConnectorError(
                    "manifest.csv must start with the header propertyName,value; it has "
                    + ",".join(header),
                    kind="input",
                )
            for row in reader:
                if len(row) >= 2 and row[0].strip():
                    manifest[row[0].strip()] = row[1].strip()
        version = manifest.get("oneroster.version")
        if version not in ("1.2",):
            raise ConnectorError(
                f"manifest.csv: oneroster.version is {version!r}; this connector reads 1.2",
                kind="input",
            )
        if "manifest.version" not in manifest:
            raise ConnectorError("manifest.csv: manifest.version is missing", kind="input")
        for key, value in manifest.items():
            if key.startswith("file.") and value not in ("bulk", "delta", "absent"):
                raise ConnectorError(
                    f"manifest.csv: {key} is {value!r}; it must be bulk, delta or absent",
                    kind="input",
                )
        return manifest

    def _encoding(self, path: Path) -> str:
        """The file's codec: UTF-8 (with or without BOM) unless told or detected otherwise."""
        chosen = self.params.get("encoding") or "auto"
        if chosen != "auto":
            try:
                _check_decodes(path, chosen)
            except UnicodeDecodeError as exc:
                raise ConnectorError(
                    f"{path.name} is not {chosen}: invalid byte {exc.object[exc.start]:#04x} "
                    f"at byte {exc.start}",
                    kind="input",
                ) from exc
            return chosen
        with open(path, "rb") as fh:
            bom = fh.read(3) == codecs.BOM_UTF8
        try:
            _check_decodes(path, "utf-8")
            return "utf-8-sig" if bom else "utf-8"
        except UnicodeDecodeError as exc:
            bad = exc.object[exc.start]
            offset = exc.start
        # Windows-1252 is what SIS exports are when they are not UTF-8. It decodes almost any
        # byte string, so accept it only if every byte is defined in it and no C1 control
        # character results; otherwise ask a detector, to name its guess in the refusal.
        try:
            _check_decodes(path, "cp1252")
        except UnicodeDecodeError:
            pass
        else:
            if not _has_c1_controls(path):
                self.log(f"{path.name} is not UTF-8; read as cp1252 (Windows-1252, detected)")
                return "cp1252"
        from charset_normalizer import from_path

        best = from_path(path, steps=5, chunk_size=4096).best()
        guess = best.encoding if best else None
        raise ConnectorError(
            f"{path.name} is not UTF-8 (invalid byte {bad:#04x} near byte {offset}) and its "
            f"encoding could not be detected{f' (best guess {guess})' if guess else ''}; set the "
            "integration's File encoding",
            kind="input",
        )

    def read(self, entity: str, window: Window) -> EntityRead:
        file, where, explode = FILES[entity]
        mode = self._manifest.get(f"file.{file}", "absent")
        if mode == "absent" or file not in self._files:
            # Nothing to say about this entity in this zip: an empty delta, never a removal.
            return EntityRead(entity=entity, complete=False, records=[])
        read = EntityRead(
            entity=entity,
            complete=mode == "bulk",
            csv=self._files[file],
            where=where,
            explode=explode,
            known_fields=frozenset(COLUMNS[file]),
        )
        if file == "users":
            read.joins += self._user_joins(entity)
        if entity == "student_demographic":
            read.derived = {"raceEthnicityCode": RACE_SQL}
        if entity == "section":
            # The course's code and title are in courses.csv; without it, the class's own.
            if "courses" in self._files:
                read.joins.append(Join(self._files["courses"], from_field="courseSourcedId"))
                read.derived = {
                    "courseCode": 'coalesce(NULLIF(j0."courseCode", \'\'), r."classCode")',
                    "courseTitle": 'coalesce(NULLIF(j0."title", \'\'), r."title")',
                }
            else:
                read.derived = {"courseCode": 'r."classCode"', "courseTitle": 'r."title"'}
        return read

    def _user_joins(self, entity: str) -> list[Join]:
        """OneRoster 1.2 moved a user's roles and orgs to roles.csv: the primary role and the
        list of orgs are aggregated from it. Birth dates come from demographics.csv."""
        joins = []
        if "roles" in self._files:
            joins.append(
                Join(
                    self._files["roles"],
                    key="userSourcedId",
                    aggregates={
                        "role": '(array_agg(x."role" ORDER BY (x."roleType" = \'primary\') '
                        'DESC, x."role"))[1]',
                        "orgSourcedIds": "string_agg(DISTINCT x.\"orgSourcedId\", ',')",
                    },
                )
            )
        if entity == "student" and "demographics" in self._files:
            joins.append(Join(self._files["demographics"]))
        return joins

    def close(self) -> None:
        if self._picked is not None and self._picked.exists():
            done = self._picked.parent / "processed"
            done.mkdir(exist_ok=True)
            self._picked.rename(done / self._picked.name)
            self._picked = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _csv_text(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def _has_c1_controls(path: Path) -> bool:
    with open(path, encoding="cp1252") as fh:
        while chunk := fh.read(1 << 20):
            if any("\x80" <= ch <= "\x9f" for ch in chunk):
                return True
    return False


def _check_decodes(path: Path, codec: str) -> None:
    decoder = codecs.getincrementaldecoder(codec)()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            decoder.decode(chunk)
        decoder.decode(b"", final=True)
