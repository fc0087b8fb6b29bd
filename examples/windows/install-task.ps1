# Start the povfarm node with Windows, through Task Scheduler. Run once, in an elevated PowerShell:
#   powershell -ExecutionPolicy Bypass -File .\install-task.ps1
# Remove it with:  Unregister-ScheduledTask -TaskName povfarm-node -Confirm:$false
#
# POV-Ray for Windows is a GUI program: the task runs in the logon session of the user below, so
# that user must be logged on (automatic logon on a dedicated render box works), and POV-Ray must
# have been started once by hand as that user to answer its first-run questions. Scenes run
# UNCONFINED on Windows (no sandbox): use a dedicated low-privilege account that owns nothing of
# value, never an administrator.

$User   = "$env:COMPUTERNAME\povfarm"            # the dedicated account
$Here   = Split-Path -Parent $MyInvocation.MyCommand.Path
$Script = Join-Path $Here "povfarm-node.ps1"

$action   = New-ScheduledTaskAction -Execute "powershell.exe" `
              -Argument "-NoProfile -ExecutionPolicy Bypass -File `"$Script`"" -WorkingDirectory $Here
$trigger  = New-ScheduledTaskTrigger -AtLogOn -User $User
$settings = New-ScheduledTaskSettingsSet -RestartCount 999 -RestartInterval (New-TimeSpan -Minutes 1) `
              -ExecutionTimeLimit (New-TimeSpan -Seconds 0) -AllowStartIfOnBatteries `
              -DontStopIfGoingOnBatteries -MultipleInstances IgnoreNew
$principal = New-ScheduledTaskPrincipal -UserId $User -LogonType Interactive -RunLevel Limited

Register-ScheduledTask -TaskName "povfarm-node" -Action $action -Trigger $trigger -Settings $settings `
    -Principal $principal -Description "povfarm render node (POV-Ray for Windows)"
Write-Host "Registered. Start it now with: Start-ScheduledTask -TaskName povfarm-node"
