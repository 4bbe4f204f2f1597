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
    [string]$MaxBytes
)

$ErrorActionPreference = 'Stop'

# ms since the Unix epoch, UTC; integer arithmetic (a double loses the last ms at today's ticks)
function Get-EpochMs {
    param([DateTime]$Time)
    $ticks = ([DateTimeOffset]::new($Time)).UtcTicks - 621355968000000000
    return [long][Math]::Floor([decimal]$ticks / 10000)
}

# Job files are UTF-8 (with or without a BOM) or, from Set-Content on 5.1, the ANSI code page.
function ConvertFrom-JobBytes {
    param([byte[]]$Bytes)
    $offset = 0
    if ($Bytes.Length -ge 3 -and $Bytes[0] -eq 0xEF -and $Bytes[1] -eq 0xBB -and $Bytes[2] -eq 0xBF) {
        $offset = 3
    }
    try {
        $strict = [Text.UTF8Encoding]::new($false, $true)
        return $strict.GetString($Bytes, $offset, $Bytes.Length - $offset)
    } catch {
        try {
            $ansi = [Text.Encoding]::GetEncoding([Globalization.CultureInfo]::CurrentCulture.TextInfo.ANSICodePage)
        } catch {
            $ansi = [Text.Encoding]::GetEncoding(28591)
        }
        return $ansi.GetString($Bytes, $offset, $Bytes.Length - $offset)
    }
}

# The few keys the client needs from a file too large to send whole; $null when it does not parse.
function Get-JobSummary {
    param([byte[]]$Bytes, [int]$Cut)
    try {
        $text = (ConvertFrom-JobBytes -Bytes $Bytes).Trim()
        $job = ConvertFrom-Json -InputObject $text
    } catch {
        return $null
    }
    if ($null -eq $job -or $job -isnot [Management.Automation.PSCustomObject]) {
        return $null
    }
    $summary = [ordered]@{}
    foreach ($key in @('started', 'finished', 'failed', 'rc', 'msg', 'changed',
            'ansible_async_watchdog_pid', 'stdout', 'stderr')) {
        $value = $null
        $property = $job.PSObject.Properties[$key]
        if ($null -ne $property) {
            $value = $property.Value
        }
        if ($null -ne $value -and -not ($value -is [string] -or $value -is [bool] -or $value -is [ValueType])) {
            $value = ConvertTo-Json -InputObject $value -Compress -Depth 3
        }
        if ($value -is [string] -and ($key -eq 'stdout' -or $key -eq 'stderr') -and $value.Length -gt $Cut) {
            $end = $Cut
            if ($end -gt 0 -and [char]::IsHighSurrogate($value[$end - 1])) {
                $end = $end - 1
            }
            $value = $value.Substring(0, $end)
        }
        $summary[$key] = $value
    }
    return $summary
}

$nowMs = Get-EpochMs -Time ([DateTime]::UtcNow)

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
$cut = [int][Math]::Min([long][int]::MaxValue, [long][Math]::Floor($maxLength / 4))

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

# 1. Processes first: a watchdog that writes its result and exits after this is then read finished.
$procs = @{}
foreach ($value in (ConvertFrom-Json -InputObject $Pids)) {
    $id = [int]$value
    $process = $null
    try {
        $process = [Diagnostics.Process]::GetProcessById($id)
    } catch {
        $process = $null
    }
    if ($null -eq $process) {
        $procs[[string]$id] = $null
        continue
    }
    try {
        $startMs = Get-EpochMs -Time $process.StartTime.ToUniversalTime()
    } catch {
        $startMs = [long]-1
    }
    $process.Dispose()
    $procs[[string]$id] = $startMs
}

# 2. List the job files; 3. read the new or changed ones; 4. report the known ones that are gone.
$dir = [Environment]::ExpandEnvironmentVariables($AsyncDir)
$files = New-Object 'System.Collections.Generic.List[object]'
$gone = New-Object 'System.Collections.Generic.List[object]'
$present = New-Object 'System.Collections.Generic.HashSet[string]'
$exists = $false
$entries = @()
if ([IO.Directory]::Exists($dir)) {
    try {
        $entries = ([IO.DirectoryInfo]::new($dir)).GetFiles()
        $exists = $true
    } catch [IO.DirectoryNotFoundException] {
        $entries = @()
    }
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
    try {
        # never ReadAllText: its FileShare.Read can make the watchdog's final write fail
        $stream = [IO.File]::Open($file.FullName, 'Open', 'Read', 'ReadWrite, Delete')
        try {
            $buffer = New-Object IO.MemoryStream
            $stream.CopyTo($buffer)
            $bytes = $buffer.ToArray()
        } finally {
            $stream.Dispose()
        }
    } catch {
        $entry['error'] = [string]$_.Exception.Message
    }
    if ($null -ne $bytes) {
        if ([long]$bytes.Length -gt $maxLength) {
            $entry['summary'] = Get-JobSummary -Bytes $bytes -Cut $cut
        } else {
            $entry['content'] = [Convert]::ToBase64String($bytes)
        }
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
    v       = 1
    dir     = $dir
    exists  = $exists
    now_ms  = $nowMs
    boot_ms = $bootMs
    files   = $files.ToArray()
    gone    = $gone.ToArray()
    procs   = $procs
}
ConvertTo-Json -InputObject $result -Compress -Depth 4
