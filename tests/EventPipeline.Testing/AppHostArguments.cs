namespace EventPipeline.Testing;

/// <summary>
/// The AppHost's arguments for a run started by a test: brokers as local executables with their data in the test's
/// temp directory, the test event types on, and fresh keys and passwords, so no run shares state or secrets with
/// another or with the developer's own AppHost (whose secrets live in user secrets).
/// </summary>
public static class AppHostArguments
{
    /// <param name="dataDirectory">Where the brokers keep their data (the test's temp directory).</param>
    /// <param name="submitKey">API key with the submit scope.</param>
    /// <param name="adminKey">API key with the admin scope.</param>
    /// <param name="passwordPrefix">Starts the generated broker passwords, to tell runs apart in process lists.</param>
    public static List<string> ForTest(string dataDirectory, string submitKey, string adminKey, string passwordPrefix) =>
    [
        "Brokers:Mode=Executables",
        $"Brokers:DataDirectory={dataDirectory}",
        "TestEvents:Enabled=true",
        $"Parameters:api-key-submit={submitKey}",
        $"Parameters:api-key-admin={adminKey}",
        $"Parameters:redis-password={passwordPrefix}-redis-" + Guid.NewGuid().ToString("N")[..12],
        $"Parameters:rabbitmq-password={passwordPrefix}-rabbit-" + Guid.NewGuid().ToString("N")[..12],
        "ASPIRE_VERSION_CHECK_DISABLED=true",
    ];
}
