"""Write a documentation-style question/answer set about a fictional backup tool, `skerry` (issue 17).

    .venv/bin/python bench/make_manual_qa.py /tmp/manual_qa.jsonl

The shipped example (examples/larkspur_support.jsonl) has one-sentence answers that all end with the same
sign-off. Real manuals are unlike it: a port number is one sentence, an error code's cause and fix or a procedure
is a paragraph of steps, and no two answers share a closing line. This set is a user manual of skerry 3.4, a
command-line backup tool invented here (commands and their options with defaults, config keys, environment
variables, limits, error codes with their causes and fixes, step-by-step procedures), so no base model knows a
fact of it. Each fact is one answer, asked in 2 to 4 phrasings: a split that holds out some phrasings tests
whether the finetune gives the fact when asked in other words.

Deterministic: the same seed writes the same file. Records are `{"question", "answer"}` (the `qa` shape).
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

SEED = 3


@dataclass(frozen=True)
class Fact:
    """One answer of the manual and the question templates it may be asked by (2-4 are drawn)."""

    id: str
    answer: str
    questions: tuple[str, ...]


# ---------------------------------------------------------------- the manual's content

COMMANDS = [
    # name, what it does, options as (flag, what it sets, default)
    ("init", "creates a new vault, the encrypted folder or bucket that holds every snapshot of a machine",
     [("--cipher", "the encryption cipher", "chacha20"), ("--shard-size", "the size of the pieces files are cut "
      "into", "12 MiB"), ("--label", "the vault's display name", "the name of the target folder")]),
    ("push", "uploads every file that changed since the last snapshot and records a new snapshot",
     [("--workers", "how many files are read and sent in parallel", "6"), ("--exclude-file", "the file listing "
      "patterns to skip", ".skerryignore"), ("--bandwidth", "an upload cap in KiB/s", "no cap"),
      ("--dry-run", "only print what would be sent", "off")]),
    ("pull", "restores files from a snapshot back onto the disk",
     [("--to", "the folder restored files are written to", "their original location"), ("--at", "the snapshot "
      "to restore from", "the latest snapshot"), ("--overwrite", "what happens to files that already exist",
      "ask")]),
    ("prune", "deletes the snapshots the retention rules no longer keep and frees their shards",
     [("--keep-daily", "daily snapshots to keep", "14"), ("--keep-weekly", "weekly snapshots to keep", "8"),
      ("--keep-monthly", "monthly snapshots to keep", "18")]),
    ("verify", "reads shards back from the vault and checks their checksums",
     [("--sample", "the percentage of shards read", "5 percent"), ("--repair", "refetch damaged shards from a "
      "mirror", "off")]),
    ("mount", "shows a snapshot as a read-only folder you can browse",
     [("--cache-mb", "the memory used to cache shards", "256 MB"), ("--idle-unmount", "the idle time after which "
      "the folder is unmounted", "20 minutes")]),
    ("schedule", "installs a timed job that runs push on its own",
     [("--every", "the interval between runs", "6 hours"), ("--window", "the hours a run may start in",
      "01:00 to 05:00")]),
    ("doctor", "checks the installation, the config file and the connection to the remote and reports problems",
     [("--network", "also test the remote's latency and throughput", "off"), ("--fix", "apply the safe fixes it "
      "finds", "off")]),
]

OPTION_DEFAULTS = [  # (command, flag) pairs also asked about alone
    ("init", "--shard-size"), ("init", "--cipher"), ("push", "--workers"), ("push", "--exclude-file"),
    ("pull", "--overwrite"), ("prune", "--keep-daily"), ("prune", "--keep-monthly"), ("verify", "--sample"),
    ("mount", "--idle-unmount"), ("mount", "--cache-mb"), ("schedule", "--every"), ("schedule", "--window"),
]

LIMITS = [
    # id, answer, questions
    ("file-size", "A single file may be at most 64 GiB; with push.large_files set to stream the limit rises to "
     "2 TiB.", ("What is the largest file skerry can back up?", "Is there a maximum file size in skerry?",
                "How big can one file be in a skerry backup?", "What's skerry's per-file size limit?")),
    ("vaults", "One machine can use up to 16 vaults.", ("How many vaults can one machine have?",
     "Is there a limit on the number of vaults per computer?", "What's the maximum number of skerry vaults?")),
    ("snapshots", "A vault keeps at most 5,000 snapshots; push refuses to add more until prune has run.",
     ("How many snapshots can a vault hold?", "Is there a cap on snapshots in one vault?",
      "What happens when a vault has too many snapshots?")),
    ("path-length", "Paths may be up to 1,024 bytes long; longer ones are skipped and listed in the push log.",
     ("What is the longest path skerry accepts?", "Does skerry have a path length limit?",
      "What does skerry do with very long file paths?")),
    ("shard-range", "Shard sizes from 4 MiB to 64 MiB are accepted; the size is fixed when the vault is created.",
     ("What shard sizes can I choose?", "Can I change the shard size of an existing vault?",
      "What is the allowed range for --shard-size?")),
    ("workers-max", "push runs at most 32 workers; a larger --workers value is lowered to 32 with a warning.",
     ("What is the maximum value of --workers?", "How many parallel workers can skerry push use at most?",
      "Can I run push with 64 workers?")),
    ("passphrase", "A vault passphrase must be at least 14 characters long and may not be the vault's label.",
     ("How long must a vault passphrase be?", "What are the passphrase rules?",
      "What's the minimum passphrase length in skerry?")),
    ("recovery-code", "The recovery code is 24 words, shown once by skerry init; store it offline.",
     ("How long is the recovery code?", "When do I get my recovery code?", "What does a skerry recovery code "
      "look like?")),
    ("mounts", "Up to 3 snapshots can be mounted at the same time.", ("How many snapshots can I mount at once?",
     "Is there a limit on simultaneous mounts?", "Can I mount five snapshots together?")),
    ("port", "The skerry daemon listens on TCP port 7743.", ("Which port does the skerry daemon use?",
     "What port must be open for skerry?", "On what port does the remote daemon listen?",
     "Which TCP port should the firewall allow for skerry?")),
    ("logs", "skerry keeps the last 10 log files of 20 MiB each in ~/.skerry/logs.", ("Where are skerry's logs?",
     "How many log files does skerry keep?", "How large can skerry log files get?")),
    ("prune-rate", "prune runs at most once an hour per vault; a second call within the hour does nothing and "
     "exits with code 0.", ("How often can prune run?", "Why did my second prune do nothing?",
                            "Can I run skerry prune twice in a row?")),
    ("platforms", "skerry 3.4 runs on Linux (kernel 4.19 or newer), macOS 12 or newer, and Windows 10 build 19041 "
     "or newer.", ("Which operating systems does skerry support?", "Does skerry run on Windows?",
                   "What is the oldest macOS skerry 3.4 runs on?", "Will skerry work on my Linux box?")),
    ("exit-codes", "skerry exits with 0 on success, 1 on a usage error, 3 when some files were skipped, 4 when "
     "the vault is locked and 5 on any other failure.", ("What exit codes does skerry use?",
     "What does exit status 3 from skerry mean?", "How can a script tell whether skerry push failed?")),
    ("label-length", "A vault label is 1 to 40 characters: letters, digits, dots, dashes and underscores.",
     ("How long can a vault label be?", "Which characters are allowed in a vault label?",
      "Can a vault name contain spaces?")),
    ("snapshot-ids", "Snapshot ids are 8 hexadecimal characters, such as 3fa9c21e; skerry ls shows them in its "
     "first column.", ("What does a snapshot id look like?", "Where do I find a snapshot's id?",
                       "How are skerry snapshots identified?")),
    ("files-per-snapshot", "A snapshot can hold up to 50 million files.", ("How many files can one snapshot "
     "contain?", "Is there a limit on files per snapshot?", "Can skerry back up 80 million files in one "
     "snapshot?")),
    ("schedule-min", "The shortest interval skerry schedule --every accepts is 15 minutes.",
     ("How often can scheduled backups run?", "What is the minimum --every for skerry schedule?",
      "Can I schedule a push every 5 minutes?")),
]

CONFIG_KEYS = [
    # key, what it controls, default, what else it takes
    ("vault.quota_gb", "the most space a vault may take on the remote", "0, which means no quota",
     "any whole number of gigabytes"),
    ("log.level", "how much skerry writes to its log", "info", "debug, info, warn or error"),
    ("remote.port", "the port skerry connects to on the remote", "7743", "any port from 1 to 65535"),
    ("tls.pin", "the SHA-256 fingerprint the remote's certificate must match", "empty, so the system's "
     "certificate store decides", "a 64-character hex fingerprint"),
    ("schedule.catch_up", "whether a run missed while the machine slept starts as soon as it wakes", "false",
     "true or false"),
    ("push.large_files", "what push does with files over 64 GiB", "refuse", "refuse, skip or stream"),
    ("cache.max_gb", "the size of the local shard cache in ~/.cache/skerry", "4", "0 to turn the cache off, or "
     "any size in gigabytes"),
    ("compress.level", "the zstd compression level of new shards", "3", "1 (fastest) to 19 (smallest)"),
    ("verify.after_push", "whether a quick verify of the new shards follows every push", "false", "true or false"),
    ("notify.email", "the address that gets a mail after scheduled runs", "empty, so no mail is sent",
     "one address or several separated by commas"),
    ("notify.on", "which scheduled runs send a notification", "failure", "always, failure or never"),
    ("push.bandwidth", "the upload cap of every push in KiB/s", "0, which means no cap", "any whole number"),
    ("remote.host", "the machine that runs the skerry daemon", "empty, so the vault must be a local folder",
     "a host name or an IP address"),
    ("log.keep", "how many old log files are kept", "10", "1 to 100"),
]

ENV_VARS = [
    ("SKERRY_HOME", "the folder holding skerry's state, logs and lock files", "~/.skerry"),
    ("SKERRY_CONFIG", "the config file skerry reads", "~/.config/skerry/skerry.toml"),
    ("SKERRY_PASSPHRASE_FILE", "a file whose first line is the vault passphrase, for unattended runs",
     "unset, so skerry asks at the prompt"),
    ("SKERRY_LOG_LEVEL", "the log level, overriding log.level from the config file", "unset"),
    ("SKERRY_NO_COLOR", "colour output (set it to 1 for plain text)", "unset, so colours are on in a terminal"),
    ("SKERRY_CACHE_DIR", "the folder of the local shard cache", "~/.cache/skerry"),
]

ERRORS = [
    # code, message, cause, fix steps, a closing note
    ("SK-104", "vault is locked by another process",
     "a second skerry command is using the vault, or a crashed one left its lock file behind",
     ["run skerry ps to see whether another command is still working on the vault",
      "if one is, wait for it to finish; a push of a large folder can hold the lock for hours",
      "if none is listed, run skerry unlock --force, which deletes ~/.skerry/vault.lock"],
     "Never delete the lock while a push runs: the snapshot it is writing would be lost. The command exits with "
     "status 4."),
    ("SK-117", "shard checksum mismatch",
     "a shard read back from the vault is not what was written, usually because the storage damaged it",
     ["run skerry verify --sample 100 to find every damaged shard",
      "run skerry verify --repair to fetch good copies from a mirror vault",
      "without a mirror, restore the affected files from an older snapshot with skerry pull --at"],
     "The damaged shard ids are listed in ~/.skerry/logs/verify.log. If more than one shard in a thousand is "
     "damaged, check the disk or the bucket before pushing again."),
    ("SK-203", "passphrase rejected",
     "the passphrase is wrong, often typed with another keyboard layout; after 5 failed attempts the vault "
     "refuses new tries for 15 minutes",
     ["check the keyboard layout and caps lock",
      "for unattended runs put the passphrase in a file named by SKERRY_PASSPHRASE_FILE",
      "if it is lost, run skerry keys recover and type the 24-word recovery code"],
     "Support cannot reset a passphrase: without it or the recovery code the vault cannot be opened."),
    ("SK-219", "key grace period expired",
     "a key rotation was started but not finished within its grace period, 72 hours by default",
     ["run skerry keys rotate --resume with the new passphrase",
      "if the old passphrase is still needed, add --grace-hours to extend the period before it ends",
      "update SKERRY_PASSPHRASE_FILE on the machines that still use the old passphrase"],
     "Pushes from machines with the old passphrase fail with SK-219 until they are updated; pulls keep working."),
    ("SK-305", "remote refused connection",
     "the skerry daemon on the remote is not running, or a firewall blocks TCP port 7743",
     ["on the remote, run skerry daemon start",
      "open TCP port 7743 in the firewall",
      "check remote.host and remote.port in the config file",
      "run skerry doctor --network to test the connection again"],
     "skerry retries 3 times, 10 seconds apart, before it reports SK-305."),
    ("SK-311", "TLS certificate not trusted",
     "the remote uses a self-signed certificate or one the system's store does not know",
     ["copy the remote's certificate to this machine",
      "run skerry trust add with the certificate file",
      "or set tls.pin to the certificate's SHA-256 fingerprint"],
     "Do not turn TLS off to get past it: skerry 3.4 has no option for that, on purpose. A pinned certificate "
     "must be pinned again when the remote renews it."),
    ("SK-402", "vault quota exceeded",
     "the vault has reached vault.quota_gb",
     ["run skerry prune to drop the snapshots retention no longer keeps",
      "run skerry compact to give the freed shards back to the remote",
      "or raise vault.quota_gb in the config file"],
     "prune alone frees nothing on the remote; only compact does, and it can take an hour on a large vault. "
     "The push that failed kept no partial snapshot, so run it again once there is room. To see how much space "
     "each snapshot holds, run skerry ls --long."),
    ("SK-418", "file too large",
     "a file is over the 64 GiB per-file limit",
     ["add the file to .skerryignore if it need not be backed up",
      "or set push.large_files to stream, which sends files up to 2 TiB in streaming mode"],
     "Streamed files are not deduplicated, so each push sends them whole again when they change."),
    ("SK-507", "snapshot index out of date",
     "the local index no longer matches the vault, for example after another machine pushed to it",
     ["run skerry reindex; it takes about a minute per 40,000 files",
      "then repeat the command that failed"],
     "The index lives in ~/.skerry/index and can be deleted safely: skerry rebuilds it on the next command."),
    ("SK-521", "clock skew too large",
     "this machine's clock differs from the remote's by more than 90 seconds",
     ["turn on automatic time sync (NTP) on both machines",
      "check the time zone setting",
      "run the command again once the clocks agree"],
     "Snapshots are named by their UTC time, so skerry refuses to write one with a wrong clock."),
    ("SK-603", "schedule window missed",
     "the machine was asleep or off for the whole --window, so the scheduled push did not run",
     ["set schedule.catch_up to true so a missed run starts on wake-up",
      "or widen the window with skerry schedule --window"],
     "A missed run is logged but sends a mail only when notify.on is always."),
    ("SK-650", "mount point busy",
     "a program still has a file or folder open inside a mounted snapshot",
     ["close the programs using the mounted folder, terminals included",
      "run skerry umount with the folder",
      "add --lazy if it is still busy"],
     "On Windows the mount is a drive letter; close File Explorer windows showing it."),
    ("SK-702", "repository format too new",
     "the vault was written by a newer skerry than this one",
     ["run skerry version on every machine that uses the vault",
      "update this machine to the same version or newer"],
     "Older versions never write to a newer vault, so nothing was damaged."),
    ("SK-733", "upload stalled",
     "no data reached the remote for 120 seconds, usually because the network dropped or --bandwidth is set "
     "very low",
     ["check the network connection",
      "raise or remove the --bandwidth cap",
      "run skerry push again; it resumes from the last finished shard"],
     "Stalls on slow links become rarer with a smaller --workers value, such as 2."),
]

PROCEDURES = [
    # id, what the user wants (for the questions), intro, steps, a closing note
    ("first-backup", "set up a first backup",
     "A first backup takes five steps.",
     ["install skerry and run skerry doctor to check the setup",
      "run skerry init with the vault's location and choose a passphrase of at least 14 characters",
      "write the 24-word recovery code down and keep it offline",
      "list folders to skip in .skerryignore",
      "run skerry push, then skerry schedule to repeat it every 6 hours"],
     "The first push sends everything and can take a day for a large disk; later ones send only the shards that "
     "changed, usually a few minutes. Keep the laptop on power for the first run: skerry pauses a push when the "
     "battery falls under 20 percent and resumes it on the next run."),
    ("restore-file", "restore one file from an older snapshot",
     "To bring back a single file as it was:",
     ["run skerry ls --since 30d to find the snapshot you want and note its id",
      "run skerry pull with the file's path and --at followed by the id",
      "add --to with another folder to keep the current file too",
      "answer the overwrite question, or pass --overwrite never"],
     "To look around first, skerry mount the snapshot and copy the file out of the mounted folder."),
    ("move-vault", "move a vault to a new disk",
     "Moving a vault keeps every snapshot.",
     ["stop scheduled runs with skerry schedule --pause",
      "copy the whole vault folder to the new disk, hidden files included",
      "run skerry relocate with the new path so the index points there",
      "run skerry verify --sample 20 on the new copy",
      "resume the schedule and delete the old copy after a week"],
     "Do not push between the copy and relocate, or the new copy misses that snapshot. Other machines that push "
     "to the vault need skerry relocate too, with the path as they see it; until then their pushes fail with "
     "SK-507."),
    ("rotate-key", "rotate a vault's encryption key",
     "Key rotation re-encrypts the vault's key, not its shards, so it is quick.",
     ["run skerry keys rotate and type the current passphrase",
      "choose the new passphrase; the old one keeps working for 72 hours",
      "update SKERRY_PASSPHRASE_FILE on every machine that pushes",
      "run skerry keys rotate --finish to retire the old passphrase before the grace period ends"],
     "A new recovery code is printed at the end; the old code stops working."),
    ("migrate-2x", "upgrade a vault made by skerry 2.x",
     "skerry 3.4 reads 2.x vaults but writes only the new format.",
     ["make sure the remote has free space of 1.5 times the vault's size",
      "run skerry migrate --from 2 on one machine only",
      "leave it running; it converts about 30 GB an hour",
      "run skerry verify --sample 100 when it ends",
      "update every other machine to 3.4 before it pushes again"],
     "An interrupted migration continues where it stopped when you run the same command again. The 2.x files "
     "are kept beside the new ones until skerry migrate --cleanup removes them, which frees the extra space."),
    ("mirror", "keep a second copy of a vault on another remote",
     "A mirror gives verify --repair somewhere to fetch good shards from.",
     ["run skerry init on the second remote with the same --shard-size as the first vault",
      "run skerry mirror add with the second vault's location",
      "the next push writes every new shard to both vaults",
      "run skerry mirror sync once to copy the older shards"],
     "A push succeeds when the first vault has the shards; a failed mirror write is retried on the next push."),
    ("exclude", "leave folders out of the backup",
     "skerry skips whatever .skerryignore lists.",
     ["create .skerryignore in the top folder of the backup",
      "write one pattern per line, such as node_modules/ or *.iso",
      "start a line with ! to keep a file a broader pattern would skip",
      "run skerry push --dry-run to see what would be sent"],
     "Files already in older snapshots stay there; prune removes them as those snapshots age out."),
    ("unattended", "run backups on a server without anyone typing the passphrase",
     "For a server, skerry reads the passphrase from a file.",
     ["write the passphrase on the first line of a file only the backup user can read, mode 600",
      "set SKERRY_PASSPHRASE_FILE to that file in the service's environment",
      "install the job with skerry schedule --every 6h",
      "set notify.email so failures reach someone"],
     "skerry refuses a passphrase file that other users can read, with SK-207. On Windows, store the "
     "passphrase with skerry keys store instead, which keeps it in the Credential Manager of the service "
     "account."),
    ("bandwidth", "limit how much bandwidth skerry uses during the day",
     "Upload speed is capped with --bandwidth, in KiB/s.",
     ["run skerry push --bandwidth 2048 to cap a single run at 2 MiB/s",
      "to cap every scheduled run, set push.bandwidth in skerry.toml",
      "keep the schedule's --window at night so the cap rarely matters"],
     "Downloads by pull and verify are never capped."),
]


# ---------------------------------------------------------------- facts, each with its question templates

def join_words(items: list[str]) -> str:
    """Items as prose: "a", "a and b", "a, b and c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def numbered(steps: list[str]) -> str:
    """Steps as a numbered sentence list, each capitalized and ending with a full stop."""
    return " ".join(f"{i}. {s[0].upper()}{s[1:]}." for i, s in enumerate(steps, 1))


def command_facts(rng: random.Random) -> list[Fact]:
    """What each command does (a sentence) and its options with defaults (a paragraph)."""
    facts = []
    for name, purpose, options in COMMANDS:
        flags = [f"{flag} ({what}; default {default})" for flag, what, default in options]
        openers = [f"skerry {name} {purpose}.", f"The {name} command {purpose}.", f"Run skerry {name} when you "
                   f"need it: it {purpose}."]
        facts.append(Fact(f"cmd-{name}", rng.choice(openers),
                          (f"What does skerry {name} do?", f"What is the {name} command for?",
                           f"Explain skerry {name}.", f"When would I use skerry {name}?")))
        listing = rng.choice([f"skerry {name} takes {len(options)} options: {join_words(flags)}.",
                              f"The options of skerry {name} are {join_words(flags)}."])
        facts.append(Fact(f"opts-{name}", listing,
                          (f"Which options does skerry {name} accept?", f"List the flags of skerry {name} and "
                           "their defaults.", f"What can I pass to skerry {name}?",
                           f"What are the defaults of skerry {name}'s options?")))
    return facts


def option_default_facts(rng: random.Random) -> list[Fact]:
    """One option's default alone: the one-sentence answers."""
    options = {(name, flag): (what, default) for name, _, opts in COMMANDS for flag, what, default in opts}
    facts = []
    for name, flag in OPTION_DEFAULTS:
        what, default = options[(name, flag)]
        answer = rng.choice([f"By default {flag} of skerry {name} is {default}.",
                             f"The default for {flag} is {default}.", f"Unless you set it, {flag} is {default}."])
        facts.append(Fact(f"default-{name}{flag}", answer,
                          (f"What is the default {flag} for skerry {name}?", f"If I don't pass {flag} to "
                           f"skerry {name}, what value is used?", f"What does skerry {name} use for {what} "
                           "by default?", f"{flag} in skerry {name}: what's the default?")))
    return facts


def config_facts(rng: random.Random) -> list[Fact]:
    """Config keys: what each controls, its default and what else it takes (two or three sentences)."""
    facts = []
    for key, what, default, values in CONFIG_KEYS:
        answer = rng.choice([f"{key} sets {what}. It defaults to {default} and accepts {values}.",
                             f"In skerry.toml, {key} controls {what}; the default is {default}, and it takes "
                             f"{values}.", f"The {key} setting decides {what}. Its default is {default}; "
                             f"allowed values are {values}."])
        facts.append(Fact(f"config-{key}", answer,
                          (f"What does the {key} setting do?", f"What is the default value of {key}?",
                           f"How do I configure {key} in skerry.toml?", f"Which values can {key} take?")))
    return facts


def env_facts(rng: random.Random) -> list[Fact]:
    facts = []
    for name, what, default in ENV_VARS:
        facts.append(Fact(f"env-{name}", rng.choice([f"{name} sets {what}; by default it is {default}.",
                                                     f"Set {name} to change {what} (default: {default})."]),
                          (f"What is {name} for?", f"What does the {name} environment variable do?",
                           f"What's the default of {name}?", f"Should I set {name}, and what happens if I "
                           "don't?")))
    return facts


def limit_facts() -> list[Fact]:
    return [Fact(f"limit-{id_}", answer, questions) for id_, answer, questions in LIMITS]


def error_facts(rng: random.Random) -> list[Fact]:
    """Each error code twice: what it means (a sentence or two), and how to fix it (the cause, then steps)."""
    facts = []
    for code, message, cause, steps, note in ERRORS:
        facts.append(Fact(f"means-{code}", f'{code} ("{message}") means that {cause}.',
                          (f"What does error {code} mean?", f'What causes "{message}" in skerry?',
                           f"Why am I seeing {code}?", f"skerry printed {code}. What went wrong?")))
        lead = rng.choice([f"{code} appears when {cause}. To fix it:", f"You see {code} because {cause}. Fix it "
                           "in this order:", f"Cause of {code}: {cause}. What to do:"])
        facts.append(Fact(f"fix-{code}", f"{lead} {numbered(steps)} {note}",
                          (f"How do I fix {code}?", f'skerry says "{message}". What should I do?',
                           f"I keep getting {code}; how do I get rid of it?",
                           f"What's the fix for the {message} error?")))
    return facts


def procedure_facts() -> list[Fact]:
    return [Fact(f"howto-{id_}", f"{intro} {numbered(steps)} {note}",
                 (f"How do I {goal} with skerry?", f"What are the steps to {goal}?", f"I want to {goal}. How?",
                  f"Walk me through how to {goal}."))
            for id_, goal, intro, steps, note in PROCEDURES]


def build_facts(seed: int = SEED) -> list[Fact]:
    """Every fact of the manual, in a fixed order (the seed picks among equivalent wordings of an answer)."""
    rng = random.Random(seed)
    return [*command_facts(rng), *option_default_facts(rng), *config_facts(rng), *env_facts(rng),
            *limit_facts(), *error_facts(rng), *procedure_facts()]


def build_records(seed: int = SEED) -> list[dict]:
    """The question/answer records: each fact asked in 2-4 of its phrasings, shuffled; `fact` names its fact."""
    rng = random.Random(seed)
    records = []
    for fact in build_facts(seed):
        count = rng.randint(2, min(4, len(fact.questions)))
        for question in rng.sample(fact.questions, count):
            records.append({"question": question, "answer": fact.answer, "fact": fact.id})
    rng.shuffle(records)
    return records


def write_set(path: Path, seed: int = SEED) -> list[dict]:
    """Write the records (question and answer only) as JSON lines; returns them with their fact ids."""
    records = build_records(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"question": r["question"], "answer": r["answer"]}, ensure_ascii=False) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, default=Path("/tmp/manual_qa.jsonl"))
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    records = write_set(args.out, args.seed)
    lengths = sorted(len(r["answer"].split()) for r in records)
    print(f"wrote {len(records)} records ({len({r['fact'] for r in records})} facts) to {args.out}; answer words "
          f"min {lengths[0]}, median {lengths[len(lengths) // 2]}, max {lengths[-1]}")


if __name__ == "__main__":
    main()
