# winasync-eda-poll v1
# One poll of an Ansible async dir, in one pipeline: see docs/poll-protocol.md in the repository.
# Its Python twin, which the simulated host runs instead, is winsim/scripts/poll.py in the
# repository: a change to one is a change to both, and to that page.
# Runs on Windows PowerShell 5.1 and on PowerShell 7. Every value comes in as a parameter;
# nothing is ever pasted into this text. The output is one JSON string.
param(
    [string]$AsyncDir,
    [string]$Known,
    [string]$Pids,
    [string]$Only,
    [string]$MaxBytes,
    [string]$MaxAnswer,
    [string]$Wait,
    [string]$Seen
)

$ErrorActionPreference = 'Stop'

# Under App Control for Business or AppLocker the session runs in ConstrainedLanguage, where the
# method calls below fail. Say so first, in words the client recognises; a copy of this script
# deployed on the host, signed and invoked by path, runs in FullLanguage (docs/poll-protocol.md).
$languageMode = [string]$ExecutionContext.SessionState.LanguageMode
if ($languageMode -ne 'FullLanguage') {
    throw "winasync-eda-poll: unsupported: the session runs in $languageMode (App Control or AppLocker): deploy the signed poll script and set poll_script"
}

# Sizes the twin declares too (tests/unit/test_poll_twins.py compares them).
$HeadBytes = 65536
$TailBytes = 65536
$MsgChars = 2048
$SummaryCost = 16384
$EntryCost = 256
$WaitStepMs = 1000

# ms since the Unix epoch, UTC; integer arithmetic (a double loses the last ms at today's ticks)
function Get-EpochMs {
    param([DateTime]$Time)
    $ticks = ([DateTimeOffset]::new($Time)).UtcTicks - 621355968000000000
    return [long][Math]::Floor([decimal]$ticks / 10000)
}

# $Count bytes from the stream's position (fewer at its end), in one pre-sized buffer.
function Read-JobBytes {
    param([IO.Stream]$Stream, [int]$Count)
    $buffer = New-Object byte[] $Count
    $total = 0
    while ($total -lt $Count) {
        $n = $Stream.Read($buffer, $total, $Count - $total)
        if ($n -le 0) {
            break
        }
        $total += $n
    }
    if ($total -lt $Count) {
        [Array]::Resize([ref]$buffer, $total)
    }
    return , $buffer
}

# The outcome of a file too large to read whole, from its first and last bytes only: keys are
# found by pattern ('{' or ',' right before a quoted key cannot occur inside a JSON string).
# $null while the file does not end as a JSON object does (half-written: read again later).
function Get-JobSummary {
    param([byte[]]$Head, [byte[]]$Tail)
    $offset = 0
    if ($Head.Length -ge 3 -and $Head[0] -eq 0xEF -and $Head[1] -eq 0xBB -and $Head[2] -eq 0xBF) {
        $offset = 3
    }
    $lenient = [Text.UTF8Encoding]::new($false, $false)
    $texts = @($lenient.GetString($Head, $offset, $Head.Length - $offset), $lenient.GetString($Tail))
    $last = $texts[1]
    if ($Tail.Length -eq 0) {
        $last = $texts[0]
    }
    if (-not $last.TrimEnd(" `t`r`n".ToCharArray()).EndsWith('}')) {
        return $null
    }
    $summary = [ordered]@{}
    foreach ($key in @('started', 'finished', 'failed', 'rc', 'changed', 'ansible_async_watchdog_pid')) {
        $summary[$key] = $null
        foreach ($text in $texts) {
            $match = [regex]::Match($text, '[{,][ \t\r\n]*"' + $key + '"[ \t\r\n]*:[ \t\r\n]*(true|false|null|-?[0-9]{1,18})(?![0-9])')
            if ($match.Success) {
                $token = $match.Groups[1].Value
                if ($token -ceq 'true') {
                    $summary[$key] = $true
                } elseif ($token -ceq 'false') {
                    $summary[$key] = $false
                } elseif ($token -cne 'null') {
                    $summary[$key] = [long]::Parse($token, [Globalization.CultureInfo]::InvariantCulture)
                }
                break
            }
        }
    }
    $summary['msg'] = $null
    foreach ($text in $texts) {
        $match = [regex]::Match($text, '[{,][ \t\r\n]*"msg"[ \t\r\n]*:[ \t\r\n]*"((?:[^"\\]|\\.)*)"')
        if ($match.Success) {
            try {
                $value = (ConvertFrom-Json -InputObject ('{"m":"' + $match.Groups[1].Value + '"}')).m
            } catch {
                $value = $null
            }
            if ($value -is [string] -and $value.Length -gt $MsgChars) {
                $end = $MsgChars
                if ([char]::IsHighSurrogate($value[$end - 1])) {
                    $end = $end - 1
                }
                $value = $value.Substring(0, $end)
            }
            $summary['msg'] = $value
            break
        }
    }
    return $summary
}

# A watchdog pid's process start (ms), -1 when it runs but its start is unreadable, $null when
# no such process runs. A pid past Int32 (GetProcessById takes an int) is no process: $null.
function Get-WatchdogStart {
    param([long]$Id)
    $process = $null
    if ($Id -ge 0 -and $Id -le [int]::MaxValue) {
        try {
            $process = [Diagnostics.Process]::GetProcessById([int]$Id)
        } catch {
            $process = $null
        }
    }
    if ($null -eq $process) {
        return $null
    }
    try {
        $startMs = Get-EpochMs -Time $process.StartTime.ToUniversalTime()
    } catch {
        $startMs = [long]-1
    }
    $process.Dispose()
    return $startMs
}

# Whether the host differs from what the client last saw: a watchdog's state other than in
# $SeenProcs (a pid missing there gets the state of the first check), or a job file new, changed or gone against
# $KnownKeys. A directory that cannot be listed counts as changed: the poll then says why.
function Test-HostChanged {
    param([string]$Dir, $KnownKeys, $OnlyNames, $PidList, $SeenProcs)
    foreach ($id in $PidList) {
        $key = [string]$id
        $state = Get-WatchdogStart -Id $id
        if (-not $SeenProcs.ContainsKey($key)) {
            # the client has no state for it yet (a job it has just read): this one is it
            $SeenProcs[$key] = $state
            continue
        }
        $before = $SeenProcs[$key]
        if (($null -eq $state) -ne ($null -eq $before) -or ($null -ne $state -and [long]$state -ne [long]$before)) {
            return $true
        }
    }
    try {
        $listed = ([IO.DirectoryInfo]::new($Dir)).GetFiles()
    } catch [IO.DirectoryNotFoundException] {
        $listed = @()
    } catch {
        return $true
    }
    $matched = 0
    foreach ($file in $listed) {
        $name = $file.Name
        if ($name -cnotmatch '^j[0-9]{1,12}\.[0-9]+$') {
            continue
        }
        if ($OnlyNames.Count -gt 0 -and -not $OnlyNames.Contains($name)) {
            continue
        }
        $fileKey = [string]$file.Length + ':' + [string](Get-EpochMs -Time $file.LastWriteTimeUtc)
        if (-not ($KnownKeys.ContainsKey($name) -and $KnownKeys[$name] -ceq $fileKey)) {
            return $true
        }
        $matched += 1
    }
    return $matched -ne $KnownKeys.Count
}

# The boot time cannot change while this runspace lives (a reboot ends it): ask CIM once.
if ($null -eq $global:WinAsyncEdaBootMs) {
    try {
        $os = Get-CimInstance -ClassName Win32_OperatingSystem -Property LastBootUpTime
        $global:WinAsyncEdaBootMs = Get-EpochMs -Time $os.LastBootUpTime
    } catch {
        $global:WinAsyncEdaBootMs = $null
    }
}
$bootMs = $global:WinAsyncEdaBootMs

$maxLength = [long]::Parse($MaxBytes, [Globalization.CultureInfo]::InvariantCulture)
$budget = [long]::Parse($MaxAnswer, [Globalization.CultureInfo]::InvariantCulture)
$spent = [long]0
$full = $false

# ConvertFrom-Json does not enumerate an array on 5.1 but does on 7: foreach copes with both.
$knownKeys = New-Object 'System.Collections.Generic.Dictionary[string,string]'
$knownObject = ConvertFrom-Json -InputObject $Known
if ($null -ne $knownObject) {
    foreach ($property in $knownObject.PSObject.Properties) {
        $knownKeys[[string]$property.Name] = [string]$property.Value
    }
}
$onlyNames = New-Object 'System.Collections.Generic.HashSet[string]'
foreach ($name in (ConvertFrom-Json -InputObject $Only)) {
    [void]$onlyNames.Add([string]$name)
}

$pidList = New-Object 'System.Collections.Generic.List[long]'
foreach ($value in (ConvertFrom-Json -InputObject $Pids)) {
    $pidList.Add([long]$value)
}

# 0. Watch mode: with Wait > 0, wait until the host differs from what the client last saw, or
# Wait seconds pass, checking about once a second (a FileSystemWatcher only wakes the check
# sooner: changes between its waits are not lost, the check lists the directory itself). Then
# answer as a poll does. Stopped meanwhile (Ctrl+C, the client closing), finally lets go.
$waitMs = [long]0
if ($Wait) {
    $waitMs = [long][Math]::Round([decimal]::Parse($Wait, [Globalization.CultureInfo]::InvariantCulture) * 1000)
}
$waitDir = [Environment]::ExpandEnvironmentVariables($AsyncDir)
# a dir the poll refuses (below) is refused at once, not after the wait
if ($waitMs -gt 0 -and $waitDir -notmatch '%[^%\\]+%' -and $waitDir -match '^([A-Za-z][:][\\/]|[\\/]{2})') {
    $seenProcs = @{}
    if ($Seen) {
        $seenObject = ConvertFrom-Json -InputObject $Seen
        if ($null -ne $seenObject) {
            foreach ($property in $seenObject.PSObject.Properties) {
                $seenProcs[[string]$property.Name] = $property.Value
            }
        }
    }
    $deadline = [DateTime]::UtcNow.AddMilliseconds($waitMs)
    $watcher = $null
    try {
        try {
            $watcher = [IO.FileSystemWatcher]::new($waitDir)
            $watcher.NotifyFilter = [IO.NotifyFilters]'FileName, LastWrite, Size'
        } catch {
            $watcher = $null
        }
        while (-not (Test-HostChanged -Dir $waitDir -KnownKeys $knownKeys -OnlyNames $onlyNames -PidList $pidList -SeenProcs $seenProcs)) {
            $left = ($deadline - [DateTime]::UtcNow).TotalMilliseconds
            if ($left -le 0) {
                break
            }
            $step = [int][Math]::Min([double]$WaitStepMs, $left)
            if ($null -ne $watcher) {
                [void]$watcher.WaitForChanged([IO.WatcherChangeTypes]::All, $step)
            } else {
                Start-Sleep -Milliseconds $step
            }
        }
    } finally {
        if ($null -ne $watcher) {
            $watcher.Dispose()
        }
    }
}

$nowMs = Get-EpochMs -Time ([DateTime]::UtcNow)

# 1. Processes first: a watchdog that writes its result and exits after this is then read finished.
$procs = @{}
foreach ($id in $pidList) {
    $procs[[string]$id] = Get-WatchdogStart -Id $id
}

# 2. List the job files; 3. read the new or changed ones; 4. report the known ones that are gone.
$dir = [Environment]::ExpandEnvironmentVariables($AsyncDir)
$files = New-Object 'System.Collections.Generic.List[object]'
$gone = New-Object 'System.Collections.Generic.List[object]'
$deferred = New-Object 'System.Collections.Generic.List[object]'
$present = New-Object 'System.Collections.Generic.HashSet[string]'
$exists = $false
$entries = @()
# Only "directory not found" means that no job ever ran as that user. Every other failure fails
# the poll and names its cause: [IO.Directory]::Exists said false for all of them alike, and the
# client then took every running job for vanished.
if ($dir -match '%[^%\\]+%') {
    throw "winasync-eda-poll: the async dir '$dir' names an environment variable this host does not define (not expanded)"
}
if ($dir -notmatch '^([A-Za-z][:][\\/]|[\\/]{2})') {
    throw "winasync-eda-poll: the async dir '$dir' is not an absolute path"
}
try {
    $entries = ([IO.DirectoryInfo]::new($dir)).GetFiles()
    $exists = $true
} catch [IO.DirectoryNotFoundException] {
    $entries = @()
} catch [UnauthorizedAccessException] {
    throw "winasync-eda-poll: access to the async dir '$dir' is denied"
} catch {
    throw "winasync-eda-poll: the async dir '$dir' cannot be listed: " + $_.Exception.Message
}

foreach ($file in $entries) {
    $name = $file.Name
    if ($name -cnotmatch '^j[0-9]{1,12}\.[0-9]+$') {
        continue
    }
    [void]$present.Add($name)
    if ($onlyNames.Count -gt 0 -and -not $onlyNames.Contains($name)) {
        continue
    }
    $size = [long]$file.Length
    $mtimeMs = Get-EpochMs -Time $file.LastWriteTimeUtc
    $fileKey = [string]$size + ':' + [string]$mtimeMs
    if ($knownKeys.ContainsKey($name) -and $knownKeys[$name] -ceq $fileKey) {
        continue
    }
    # the byte budget: once a file does not fit, it and every later one wait for the next poll
    if ($size -gt $maxLength) {
        $cost = [long]$SummaryCost
    } else {
        $cost = [long][Math]::Floor(($size + 2) / 3) * 4 + $EntryCost
    }
    if ($full -or ($files.Count -gt 0 -and $spent + $cost -gt $budget)) {
        $full = $true
        $deferred.Add($name)
        continue
    }
    $spent += $cost
    $entry = [ordered]@{
        name     = $name
        size     = $size
        mtime_ms = $mtimeMs
        ctime_ms = Get-EpochMs -Time $file.CreationTimeUtc
        content  = $null
        summary  = $null
        error    = $null
    }
    $bytes = $null
    $head = $null
    $tail = [byte[]]@()
    try {
        # Set-Content (the watchdog's final write) opens the file sharing only Write, so it fails
        # while ANY reader holds a handle, whatever that reader shares: the handle stays open for
        # one pre-sized read (head and tail of a file too large) and nothing else.
        $stream = [IO.File]::Open($file.FullName, 'Open', 'Read', 'ReadWrite, Delete')
        try {
            if ($size -le $maxLength) {
                $bytes = Read-JobBytes -Stream $stream -Count ([int]$size)
            } else {
                $head = Read-JobBytes -Stream $stream -Count $HeadBytes
                if ($size -gt $HeadBytes) {
                    $count = [int][Math]::Min($size - $HeadBytes, [long]$TailBytes)
                    [void]$stream.Seek(-$count, [IO.SeekOrigin]::End)
                    $tail = Read-JobBytes -Stream $stream -Count $count
                }
            }
        } finally {
            $stream.Dispose()
        }
    } catch {
        $entry['error'] = [string]$_.Exception.Message
    }
    if ($null -ne $bytes) {
        $entry['content'] = [Convert]::ToBase64String($bytes)
    } elseif ($null -ne $head) {
        $entry['summary'] = Get-JobSummary -Head $head -Tail $tail
    }
    $files.Add($entry)
}

foreach ($name in $knownKeys.Keys) {
    if (-not $present.Contains($name)) {
        $gone.Add($name)
    }
}

# Plain object[] (never a PSObject-wrapped array) so 5.1 writes [..] even for 0 or 1 element;
# string keys in procs, as 5.1 refuses other keys.
$result = [ordered]@{
    v        = 1
    dir      = $dir
    exists   = $exists
    now_ms   = $nowMs
    boot_ms  = $bootMs
    ansi_cp  = [Text.Encoding]::Default.CodePage
    files    = $files.ToArray()
    gone     = $gone.ToArray()
    deferred = $deferred.ToArray()
    procs    = $procs
}
ConvertTo-Json -InputObject $result -Compress -Depth 4
